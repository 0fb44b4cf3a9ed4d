#!/usr/bin/env bash
# The installed system (docs/INSTALL.md):
#  1. `make install DESTDIR=...` puts exactly the expected files (PREFIX=/usr/local),
#     keeps an edited /etc file on a second install, and `make uninstall` removes
#     everything but that edited file;
#  2. every man page lints clean (groff -ww, man --warnings) and names every long
#     option its command's --help prints, and every command has a page;
#  3. `make deb` builds a package whose control, conffiles and files are right;
#  4. in a throw-away copy-on-write view of this machine (an overlay of / on a
#     tmpfs, in a private mount namespace: the host is never written), the .deb
#     installs with dpkg, `giantvm mode` runs from it, the unit as installed
#     passes `systemd-analyze verify`, the token postinst made is accepted by the
#     memory server, and `dpkg --purge` leaves nothing behind; the same for the
#     /usr/local unit of `make install`.
# Needs root (mount namespace, overlayfs, chroot), groff, man-db, dpkg-dev, systemd.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
GVM=$BUILD/giantvm

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }

[ "$(id -u)" = 0 ] || skip "needs root (mount namespace, overlayfs, chroot)"
for t in groff man systemd-analyze dpkg-deb dpkg-shlibdeps unshare chroot; do
	command -v "$t" >/dev/null || skip "'$t' not installed (packages: groff-base man-db systemd dpkg-dev util-linux)"
done
[ -x "$GVM" ] || fail "$GVM not built (make)"
if dpkg-query -W -f='${Status}' giantvm 2>/dev/null | grep -q 'installed'; then
	skip "package giantvm is installed on this host: the leftover check after purge would see its files"
fi

TMP=$(mktemp -d /tmp/giantvm-install.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------- 1. make install
D=$TMP/destdir
make -s --no-print-directory install BUILD="$BUILD" DESTDIR="$D" > "$TMP/install.out"
expected() {
	local p=usr/local
	printf '%s\n' \
		$p/bin/giantvm $p/bin/giantvm-qemu \
		$p/lib/giantvm/libgiantvm-preload.so $p/lib/libgiantvm.a \
		$p/include/giantvm.h $p/include/giantvm_memserver.h $p/include/giantvm_ctl.h \
		$p/lib/systemd/system/giantvm-memserver.service \
		etc/udev/rules.d/60-giantvm-userfaultfd.rules \
		etc/giantvm/cluster_uffd.conf etc/default/giantvm-memserver \
		etc/sysctl.d/60-giantvm-userfaultfd.conf
	for m in giantvm giantvm-run giantvm-memserver giantvm-mode giantvm-stat giantvm-bench giantvm-qemu; do
		echo $p/share/man/man1/$m.1
	done
	echo $p/share/man/man5/cluster_uffd.conf.5
	for f in README.md docs/*.md; do echo $p/share/doc/giantvm/"$(basename "$f")"; done
	[ -e dist/libvirt/giantvm-qemu.conf ] && echo etc/giantvm/giantvm-qemu.conf
	[ -e dist/libvirt/domain.xml ] && echo $p/share/doc/giantvm/domain.xml
	[ -e dist/libvirt/qemu.conf.snippet ] && echo $p/share/doc/giantvm/qemu.conf.snippet
	[ -e dist/libvirt/tmpfiles.conf ] && echo $p/lib/tmpfiles.d/giantvm-qemu.conf
	return 0
}
expected | sort > "$TMP/want"
(cd "$D" && find . ! -type d | sed 's|^\./||' | sort) > "$TMP/got"
diff -u "$TMP/want" "$TMP/got" || fail "make install: the installed files differ from the list above (- expected, + installed)"
[ "$(readlink "$D/usr/local/bin/giantvm-qemu")" = giantvm ] || fail "giantvm-qemu is not a symlink to giantvm"
[ "$(stat -c %a "$D/usr/local/bin/giantvm")" = 755 ] || fail "giantvm not mode 755"
grep -qx 'ExecStart=/usr/local/bin/giantvm memserver --token-file %d/token $GIANTVM_MEMSERVER_ARGS' \
	"$D/usr/local/lib/systemd/system/giantvm-memserver.service" || fail "unit's ExecStart does not name /usr/local/bin/giantvm"
grep -q '@[A-Z]*@' "$D/usr/local/lib/systemd/system/giantvm-memserver.service" && fail "unit has an unsubstituted @VAR@"
"$D/usr/local/bin/giantvm" mode >/dev/null || fail "installed giantvm mode failed"
grep -qx 'KERNEL=="userfaultfd", SUBSYSTEM=="misc", GROUP="kvm", MODE="0660"' \
	"$D/etc/udev/rules.d/60-giantvm-userfaultfd.rules" || fail "udev rule does not give /dev/userfaultfd to group kvm, 0660"
active=$(grep -vE '^[[:space:]]*(#|$)' "$D/etc/sysctl.d/60-giantvm-userfaultfd.conf" || true)
[ -z "$active" ] || fail "the sysctl drop-in sets something (it must only document): $active"
ok "make install: $(wc -l < "$TMP/got") files, as expected"

# A second install keeps an edited /etc file; uninstall removes all else.
echo "10.9.9.9 # edited" >> "$D/etc/giantvm/cluster_uffd.conf"
make -s --no-print-directory install BUILD="$BUILD" DESTDIR="$D" > "$TMP/install2.out"
grep -q "kept $D/etc/giantvm/cluster_uffd.conf" "$TMP/install2.out" || fail "second install did not say it kept the edited file"
grep -q '10.9.9.9 # edited' "$D/etc/giantvm/cluster_uffd.conf" || fail "second install overwrote an edited /etc file"
make -s --no-print-directory uninstall BUILD="$BUILD" DESTDIR="$D" > "$TMP/uninstall.out"
grep -q "kept $D/etc/giantvm/cluster_uffd.conf (edited" "$TMP/uninstall.out" || fail "uninstall did not name the edited file it kept"
left=$(cd "$D" && find . ! -type d | sed 's|^\./||')
[ "$left" = etc/giantvm/cluster_uffd.conf ] || fail "make uninstall left: $left"
ok "second install kept the edited /etc file; uninstall removed everything else"

# ---------------------------------------------------------------- 2. man pages
for m in man/*.[15]; do
	w=$( { groff -man -ww -z "$m" 2>&1; MANWIDTH=80 man --warnings -l "$m" 2>&1 >/dev/null; } || true)
	[ -z "$w" ] || fail "$m has warnings: $w"
done
ok "$(ls man/*.[15] | wc -l) man pages lint clean (groff -man -ww, man --warnings)"

long_opts() { grep -oE -- '--[a-z][a-z0-9-]+' | sort -u; }
# Options a command declares (its usage lines up to the first blank line, and
# option-table lines starting with --) need an entry of their own in the page:
# a tag line `.B \-\-opt`, `.BI \-\-opt ...` or `.BR \-\-opt ...`. Any other
# option its --help mentions must at least appear in the page.
check_opts() { # page text-of-help
	local page=$1 help=$2 missing="" untagged="" o re
	local declared
	declared=$( { printf '%s\n' "$help" | sed '/^$/q'; printf '%s\n' "$help" | grep -E '^[[:space:]]+--' || true; } | long_opts)
	for o in $(printf '%s\n' "$help" | long_opts); do
		# roff spells - as \-; both are accepted
		grep -qF -- "${o//-/\\-}" "$page" || grep -qF -- "$o" "$page" || missing="$missing $o"
	done
	for o in $declared; do
		re="^\\.(B|BI|BR) ${o//-/\\\\-}( |\$)"
		grep -qE -- "$re" "$page" || untagged="$untagged $o"
	done
	[ -z "$missing" ] || fail "$page lacks option(s) that --help prints:$missing"
	[ -z "$untagged" ] || fail "$page has no entry (.B/.BI/.BR \\-\\-OPT line) for option(s) of the command's usage or option list:$untagged"
}
top=$("$GVM" --help)
check_opts man/giantvm.1 "$top
  --version"
cmds=$(printf '%s\n' "$top" | sed -n '/^commands:/,/^$/p' | awk 'NF && $1 != "commands:" {print $1}' | sort -u)
[ -n "$cmds" ] || fail "no commands found in giantvm --help"
for c in $cmds; do
	[ -f "man/giantvm-$c.1" ] || fail "command '$c' has no man page man/giantvm-$c.1"
	check_opts "man/giantvm-$c.1" "$("$GVM" "$c" --help)"
	grep -q "giantvm\\\\-$c (1)" man/giantvm.1 || fail "giantvm(1) does not point to giantvm-$c(1)"
done
ok "every command ($(echo $cmds)) has a page naming every option of its --help"

# ---------------------------------------------------------------- 3. make deb
VERSION=$("$GVM" --version | awk '{print $2}')
ARCH=$(dpkg --print-architecture)
DEB=$TMP/giantvm_${VERSION}_$ARCH.deb
BUILD=$BUILD VERSION=$VERSION ARCH=$ARCH OUT=$DEB dist/debian/build-deb.sh >/dev/null
[ -s "$DEB" ] || fail "no package built"
f() { dpkg-deb -f "$DEB" "$1"; }
[ "$(f Package)" = giantvm ] && [ "$(f Version)" = "$VERSION" ] && [ "$(f Architecture)" = "$ARCH" ] ||
	fail "control: $(f Package) $(f Version) $(f Architecture)"
f Depends | grep -q 'libc6 (>= ' || fail "Depends lacks libc6: $(f Depends)"
f Depends | grep -q 'libssl3' || fail "Depends lacks libssl3: $(f Depends)"
f Recommends | grep -q qemu-system-x86 || fail "Recommends lacks qemu-system-x86"
dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles | sort > "$TMP/conffiles"
(dpkg-deb -c "$DEB" | awk '{print $6}' | sed -n 's|^\./etc/\(.*[^/]\)$|/etc/\1|p' | sort) > "$TMP/etcfiles"
diff -u "$TMP/etcfiles" "$TMP/conffiles" || fail "conffiles is not every file under /etc"
grep -qx /etc/default/giantvm-memserver "$TMP/conffiles" || fail "no /etc/default/giantvm-memserver conffile"
ok "make deb: $(basename "$DEB"), Depends: $(f Depends); $(wc -l < "$TMP/conffiles") conffiles"

# ------------------------------------------- 4. install, run, verify, purge (overlay)
# Everything below runs in a private mount namespace: / seen through an overlay
# whose upper layer is a tmpfs, so dpkg and the maintainer scripts change only
# that layer, which is listed afterwards (every file it holds, and every
# whiteout = a deleted host file) and thrown away with the namespace.
cp "$DEB" "$TMP/giantvm.deb"
cat > "$TMP/inside.sh" <<'INSIDE'
#!/usr/bin/env bash
# Runs chrooted in the overlay. $1: the .deb; $2: the version it must report.
set -euo pipefail
fail() { echo "FAIL (in the installed root): $*"; exit 1; }
dpkg -i "$1" > /tmp/dpkg-i.log 2>&1 || { cat /tmp/dpkg-i.log; fail "dpkg -i"; }
dpkg-query -W -f='${Status}\n' giantvm | grep -q 'install ok installed' || fail "not installed"
out=$(/usr/bin/giantvm mode) || fail "giantvm mode exited $?"
echo "$out" | grep -q '^\[GiantVM\] .* Mode\.' || fail "giantvm mode printed: $out"
echo "installed: $out" | head -1
[ "$(/usr/bin/giantvm --version)" = "giantvm $2" ] || fail "giantvm --version: $(/usr/bin/giantvm --version)"
[ "$(readlink -f /usr/bin/giantvm-qemu)" = /usr/bin/giantvm ] || fail "giantvm-qemu link"
[ -r /usr/lib/giantvm/libgiantvm-preload.so ] || fail "no preload library"
# With the libvirt wrapper in the tree (its config installed), the installed
# link acts as QEMU: probing such as -version passes straight through.
if [ -e /etc/giantvm/giantvm-qemu.conf ] && command -v qemu-system-x86_64 >/dev/null; then
	/usr/bin/giantvm-qemu -version | grep -q '^QEMU emulator version' || fail "giantvm-qemu -version"
	echo "giantvm-qemu -version: passed through to QEMU"
fi
for m in giantvm giantvm-run giantvm-memserver giantvm-mode giantvm-stat giantvm-bench giantvm-qemu; do
	man -w "$m" >/dev/null 2>&1 || fail "man -w $m finds no page"
done
man -w 5 cluster_uffd.conf >/dev/null 2>&1 || fail "man -w 5 cluster_uffd.conf finds no page"
v=$(systemd-analyze verify /usr/lib/systemd/system/giantvm-memserver.service 2>&1) || fail "systemd-analyze verify: $v"
[ -z "$v" ] || fail "systemd-analyze verify warns: $v"
echo "systemd-analyze verify: clean"
# The hardening must not regress: exposure at most 1.5 of 10 (it is 1.1).
systemd-analyze security --offline=yes --threshold=15 /usr/lib/systemd/system/giantvm-memserver.service \
	> /tmp/sec.log 2>&1 || { cat /tmp/sec.log; fail "systemd-analyze security: exposure above 1.5"; }
echo "systemd-analyze security: $(grep -o 'exposure level.*' /tmp/sec.log)"; rm -f /tmp/sec.log
t=/etc/giantvm/pool.token
[ "$(stat -c '%a %U' "$t")" = "600 root" ] || fail "postinst's token: $(stat -c '%a %U' "$t")"
# What the unit runs, with its credential (a 0400 copy, as systemd makes it)
# and a free port instead of the configured one.
mkdir -p /tmp/cred && install -m 400 "$t" /tmp/cred/token
. /etc/default/giantvm-memserver
[ -n "$GIANTVM_MEMSERVER_ARGS" ] || fail "/etc/default/giantvm-memserver sets no GIANTVM_MEMSERVER_ARGS"
/usr/bin/giantvm memserver --token-file /tmp/cred/token --listen 127.0.0.1:0 --port-file /tmp/port \
	> /tmp/ms.log 2>&1 & ms=$!
for _ in $(seq 100); do [ -s /tmp/port ] && break; kill -0 $ms 2>/dev/null || break; sleep 0.05; done
[ -s /tmp/port ] || { kill $ms 2>/dev/null; cat /tmp/ms.log; fail "memserver with postinst's token did not start"; }
kill -TERM $ms; wait $ms || fail "memserver exit $? after SIGTERM"
rm -rf /tmp/cred /tmp/port /tmp/ms.log
echo "memserver started with postinst's token and stopped cleanly"
dpkg -r giantvm > /tmp/dpkg-r.log 2>&1 || { cat /tmp/dpkg-r.log; fail "dpkg -r"; }
[ ! -e /usr/bin/giantvm ] || fail "dpkg -r left /usr/bin/giantvm"
[ -e /etc/default/giantvm-memserver ] || fail "dpkg -r removed a conffile (only purge should)"
dpkg --purge giantvm > /tmp/dpkg-p.log 2>&1 || { cat /tmp/dpkg-p.log; fail "dpkg --purge"; }
dpkg-query -W giantvm >/dev/null 2>&1 && fail "dpkg still knows giantvm after purge"
rm -f /tmp/dpkg-*.log
exit 0
INSIDE
cat > "$TMP/inside-local.sh" <<'INSIDE'
#!/usr/bin/env bash
set -euo pipefail
u=/usr/local/lib/systemd/system/giantvm-memserver.service
v=$(systemd-analyze verify "$u" 2>&1) || { echo "FAIL: systemd-analyze verify $u: $v"; exit 1; }
[ -z "$v" ] || { echo "FAIL: systemd-analyze verify $u warns: $v"; exit 1; }
/usr/local/bin/giantvm mode >/dev/null
echo "systemd-analyze verify (make install, /usr/local): clean"
INSIDE
chmod +x "$TMP/inside.sh" "$TMP/inside-local.sh"

# $1: the workspace; runs as the namespace's init-less shell.
cat > "$TMP/ns.sh" <<'NS'
#!/usr/bin/env bash
set -euo pipefail
W=$1 SRC=$2 BUILD=$3 VERSION=$4
mount --make-rprivate /
mkdir -p "$W/ov"
mount -t tmpfs -o size=512m,mode=0755 gvm-ov "$W/ov"
mkdir -p "$W/ov/upper" "$W/ov/work" "$W/ov/root"
M=$W/ov/root
mount -t overlay gvm-root -o "lowerdir=/,upperdir=$W/ov/upper,workdir=$W/ov/work" "$M" ||
	{ echo "SKIP: cannot mount an overlay of / here (see above)"; exit 77; }
mount --rbind /dev "$M/dev"
mount -t proc proc "$M/proc"
mount --rbind /sys "$M/sys"
mount -t tmpfs -o mode=1777 tmpfs "$M/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$M/run"
cp "$W/giantvm.deb" "$W/inside.sh" "$W/inside-local.sh" "$M/tmp/"

chroot "$M" /tmp/inside.sh /tmp/giantvm.deb "$VERSION"
# What the package left: every file, link or whiteout in the upper layer, but
# dpkg's own records and logs and man-db's index (its trigger ran).
cd "$W/ov/upper"
left=$(find . \( -type f -o -type l -o -type c \) | sed 's|^\./||' |
	grep -vE '^(var/lib/dpkg/|var/log/(dpkg|alternatives)\.log$|var/cache/man/|var/cache/debconf/)' || true)
[ -z "$left" ] || { echo "FAIL: after dpkg --purge, left on the system:"; echo "$left"; exit 1; }
echo "dpkg --purge: nothing left outside dpkg's own database and logs"
cd "$SRC"
make -s --no-print-directory install BUILD="$BUILD" DESTDIR="$M" > /dev/null
chroot "$M" /tmp/inside-local.sh
make -s --no-print-directory uninstall BUILD="$BUILD" DESTDIR="$M" > /dev/null
cd "$W/ov/upper"
left=$(find . \( -type f -o -type l -o -type c \) | sed 's|^\./||' |
	grep -vE '^(var/lib/dpkg/|var/log/(dpkg|alternatives)\.log$|var/cache/man/|var/cache/debconf/)' || true)
[ -z "$left" ] || { echo "FAIL: after make uninstall, left on the system:"; echo "$left"; exit 1; }
echo "make uninstall (in the overlay): nothing left"
NS
chmod +x "$TMP/ns.sh"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || skip "no overlayfs in this kernel"
rc=0
unshare --mount --propagation private "$TMP/ns.sh" "$TMP" "$PWD" "$BUILD" "$VERSION" || rc=$?
[ "$rc" -ne 77 ] || exit 77
[ "$rc" -eq 0 ] || fail "the package did not install, run, verify or remove cleanly (see above)"
ok "the .deb installs, runs giantvm mode, verifies and purges cleanly"
echo "PASS"
