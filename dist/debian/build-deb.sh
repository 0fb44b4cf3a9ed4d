#!/usr/bin/env bash
# Builds the Debian package from a staging `make install DESTDIR=... PREFIX=/usr`:
#   BUILD=build VERSION=0.1.0 ARCH=amd64 OUT=build/giantvm_0.1.0_amd64.deb dist/debian/build-deb.sh
# (`make deb` sets them). Depends come from dpkg-shlibdeps (what the binaries
# link); every file under /etc is a conffile; maintainer scripts are the ones
# beside this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BUILD:=build}" "${VERSION:?VERSION not set}" "${ARCH:=amd64}"
: "${OUT:=build/giantvm_${VERSION}_${ARCH}.deb}"
stage=$BUILD/deb
root=$stage/root
rm -rf "$stage"
mkdir -p "$root/DEBIAN" "$stage/debian"

make -s --no-print-directory install BUILD="$BUILD" DESTDIR="$PWD/$root" PREFIX=/usr SYSCONFDIR=/etc >/dev/null
gzip -9n "$root"/usr/share/man/man*/*.[0-9]
# A Debian package says where it comes from and under which terms.
printf 'giantvm %s, built from %s.\nSee /usr/share/doc/giantvm/README.md.\n' \
	"$VERSION" "$(git describe --always --dirty 2>/dev/null || echo 'a source tree')" \
	> "$root/usr/share/doc/giantvm/copyright"

# dpkg-shlibdeps wants a debian/control naming the package.
printf 'Source: giantvm\n\nPackage: giantvm\nArchitecture: any\n' > "$stage/debian/control"
depends=$(cd "$stage" && dpkg-shlibdeps -O -e"$PWD/root/usr/bin/giantvm" \
	-e"$PWD/root/usr/lib/giantvm/libgiantvm-preload.so" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

cat > "$root/DEBIAN/control" <<CONTROL
Package: giantvm
Version: $VERSION
Architecture: $ARCH
Maintainer: giantvm developers <dev@giantvm>
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends
Recommends: qemu-system-x86, udev
Suggests: libvirt-daemon-system
Description: virtual machines whose RAM lives in a pool of memory servers
 giantvm runs QEMU guests whose RAM is fetched on demand, over userfaultfd,
 from a pool of memory servers, with replicas, failover and a local budget.
 This package holds the giantvm command (run, memserver, mode, stat, bench),
 the giantvm-qemu emulator wrapper for libvirt, the preload library loaded
 into QEMU, the public headers and static library, manual pages, a hardened
 systemd unit for the memory server and a udev rule giving /dev/userfaultfd
 to group kvm.
CONTROL
(cd "$root" && find etc -type f | sed 's|^|/|' | sort) > "$root/DEBIAN/conffiles"
for s in postinst prerm postrm; do
	install -m 755 "dist/debian/$s" "$root/DEBIAN/$s"
done
dpkg-deb --root-owner-group -Zxz --build "$root" "$OUT" >/dev/null
echo "$OUT"
