# giantvm: `make` builds build/giantvm and build/libgiantvm-preload.so;
# `make test` runs every test; `make demo` boots a small guest on an embedded pool;
# `make install` / `make uninstall` (PREFIX, DESTDIR) and `make deb`: docs/INSTALL.md.
# ASAN=1 builds everything with AddressSanitizer + UndefinedBehaviorSanitizer.

CC       ?= cc
BUILD    ?= build
PREFIX   ?= /usr/local
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -Wall -Wextra -Werror -Wno-format-truncation -fPIC -pthread -D_GNU_SOURCE
# The library, the memory server and the preload see the library's insides;
# the CLI sees the public headers (include/) and its own directory only.
LIB_INC  := -Iinclude -Isrc/lib -Isrc/memserver
CLI_INC  := -Iinclude
LDLIBS   += -pthread -lcrypto
# The compiler writes each object's and test binary's dependencies (every
# header and every #included .c)
# to a .d file beside it, included at the end of this file; a target whose .d
# is missing (a build from before this rule) is rebuilt once to write it.
DEPFLAGS := -MMD -MP
ifeq ($(ASAN),1)
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
BUILD    := build-asan
endif

LIB_SRC  := $(wildcard src/lib/*.c) $(wildcard src/memserver/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_SRC  := $(wildcard src/cli/*.c)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
# Everything of the CLI but main(): the tests and fuzzers link it too.
CLI_LIB_OBJ := $(filter-out $(BUILD)/src/cli/main.o,$(CLI_OBJ))
PRE_SRC  := $(wildcard src/preload/*.c)
PRE_OBJ  := $(PRE_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(wildcard tests/unit/*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
INT_SRC  := $(wildcard tests/integration/*.c)
INT_BIN  := $(INT_SRC:tests/integration/%.c=$(BUILD)/tests/%)

.PHONY: all test unit demo install clean fuzz bench
all: $(BUILD)/giantvm $(BUILD)/libgiantvm-preload.so $(UNIT_BIN) $(INT_BIN)

$(BUILD)/src/cli/%.o: src/cli/%.c $(BUILD)/src/cli/%.d
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) $(CLI_INC) -c -o $@ $<

$(BUILD)/%.o: %.c $(BUILD)/%.d
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) $(LIB_INC) -c -o $@ $<

$(BUILD)/libgiantvm.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libgiantvm-cli.a: $(CLI_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/giantvm: $(BUILD)/src/cli/main.o $(BUILD)/libgiantvm-cli.a $(BUILD)/libgiantvm.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The preload library exports only what src/preload/preload.map lists.
$(BUILD)/libgiantvm-preload.so: $(PRE_OBJ) $(BUILD)/libgiantvm.a src/preload/preload.map
	$(CC) $(LDFLAGS) -shared -Wl,--version-script=src/preload/preload.map -o $@ $(PRE_OBJ) $(BUILD)/libgiantvm.a $(LDLIBS) -ldl

TEST_LIBS := $(BUILD)/libgiantvm-cli.a $(BUILD)/libgiantvm.a

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/tests/%.d $(TEST_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) $(LIB_INC) -Isrc/cli -Itests $(LDFLAGS) -o $@ $< $(TEST_LIBS) $(LDLIBS)

$(BUILD)/tests/%: tests/integration/%.c $(BUILD)/tests/%.d $(TEST_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) $(LIB_INC) -Isrc/cli -Itests $(LDFLAGS) -o $@ $< $(TEST_LIBS) $(LDLIBS)

test: all
	BUILD=$(BUILD) tests/run.sh

unit: all
	BUILD=$(BUILD) tests/run.sh unit

demo: all
	BUILD=$(BUILD) tests/e2e/demo.sh

bench: all
	$(BUILD)/giantvm bench

# libFuzzer harnesses (clang), built by the script in build-fuzz/: FUZZ_SECS per harness.
FUZZ_SECS ?= 60
fuzz:
	tests/fuzz/run.sh $(FUZZ_SECS)

# Installed layout (docs/INSTALL.md). /etc files are installed only when absent
# (an edited one is never overwritten); `make uninstall` removes an /etc file
# only while it still matches the shipped one. The unit goes where systemd
# looks ($(PREFIX)/lib/systemd/system, /usr/local included); udev reads no
# /usr/local, so its rule goes in /etc unless PREFIX=/usr.
SYSCONFDIR ?= /etc
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR     ?= $(PREFIX)/share/man
DOCDIR     ?= $(PREFIX)/share/doc/giantvm
UNITDIR    ?= $(PREFIX)/lib/systemd/system
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
ifeq ($(PREFIX),/usr)
UDEVDIR    ?= $(PREFIX)/lib/udev/rules.d
else
UDEVDIR    ?= $(SYSCONFDIR)/udev/rules.d
endif
# The version is said once, in src/cli/main.c (`giantvm --version`).
VERSION    := $(shell sed -n 's/^\#define GVM_VERSION "\(.*\)"$$/\1/p' include/giantvm.h)
MAN1       := $(wildcard man/*.1)
MAN5       := $(wildcard man/*.5)
HEADERS    := include/giantvm.h include/giantvm_memserver.h include/giantvm_ctl.h
# Files copied to /etc when absent: source:destination (below SYSCONFDIR).
# dist/libvirt/ belongs to the libvirt wrapper; it may be absent.
ETC_FILES  := dist/giantvm/cluster_uffd.conf:giantvm/cluster_uffd.conf \
              dist/systemd/giantvm-memserver.default:default/giantvm-memserver \
              dist/sysctl.d/60-giantvm-userfaultfd.conf:sysctl.d/60-giantvm-userfaultfd.conf \
              $(if $(wildcard dist/libvirt/giantvm-qemu.conf),dist/libvirt/giantvm-qemu.conf:giantvm/giantvm-qemu.conf)
DOC_FILES  := README.md $(wildcard docs/*.md) $(wildcard dist/libvirt/domain.xml dist/libvirt/qemu.conf.snippet)
# The libvirt wrapper's run directory, made at boot (when dist/libvirt/ has it).
TMPFILES   := $(wildcard dist/libvirt/tmpfiles.conf)

.PHONY: uninstall deb
install: all
	install -D -m 755 $(BUILD)/giantvm $(DESTDIR)$(BINDIR)/giantvm
	ln -sfn giantvm $(DESTDIR)$(BINDIR)/giantvm-qemu
	install -D -m 755 $(BUILD)/libgiantvm-preload.so $(DESTDIR)$(LIBDIR)/giantvm/libgiantvm-preload.so
	install -D -m 644 $(BUILD)/libgiantvm.a $(DESTDIR)$(LIBDIR)/libgiantvm.a
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(DOCDIR)
	install -m 644 $(HEADERS) $(DESTDIR)$(INCLUDEDIR)/
	install -m 644 $(MAN1) $(DESTDIR)$(MANDIR)/man1/
	install -m 644 $(MAN5) $(DESTDIR)$(MANDIR)/man5/
	install -m 644 $(DOC_FILES) $(DESTDIR)$(DOCDIR)/
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(UDEVDIR)
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' \
		dist/systemd/giantvm-memserver.service.in > $(DESTDIR)$(UNITDIR)/giantvm-memserver.service
	chmod 644 $(DESTDIR)$(UNITDIR)/giantvm-memserver.service
	install -m 644 dist/udev/60-giantvm-userfaultfd.rules $(DESTDIR)$(UDEVDIR)/
	$(if $(TMPFILES),install -D -m 644 $(TMPFILES) $(DESTDIR)$(TMPFILESDIR)/giantvm-qemu.conf)
	@set -e; for f in $(ETC_FILES); do \
		src=$${f%%:*}; dst="$(DESTDIR)$(SYSCONFDIR)/$${f#*:}"; \
		if [ -e "$$dst" ]; then echo "install: kept $$dst (exists; the shipped version is $$src)"; \
		else echo "install -D -m 644 $$src $$dst"; install -D -m 644 "$$src" "$$dst"; fi; \
	done

# Removes what install put, except /etc files that were edited (they are named).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/giantvm $(DESTDIR)$(BINDIR)/giantvm-qemu
	rm -f $(DESTDIR)$(LIBDIR)/giantvm/libgiantvm-preload.so $(DESTDIR)$(LIBDIR)/libgiantvm.a
	rmdir $(DESTDIR)$(LIBDIR)/giantvm 2>/dev/null || true
	rm -f $(addprefix $(DESTDIR)$(INCLUDEDIR)/,$(notdir $(HEADERS)))
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(MAN1))) $(addprefix $(DESTDIR)$(MANDIR)/man5/,$(notdir $(MAN5)))
	rm -rf $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(UNITDIR)/giantvm-memserver.service $(DESTDIR)$(UDEVDIR)/60-giantvm-userfaultfd.rules
	rm -f $(DESTDIR)$(TMPFILESDIR)/giantvm-qemu.conf
	@for f in $(ETC_FILES) dist/libvirt/giantvm-qemu.conf:giantvm/giantvm-qemu.conf; do \
		src=$${f%%:*}; dst="$(DESTDIR)$(SYSCONFDIR)/$${f#*:}"; \
		[ -e "$$dst" ] || continue; \
		if [ -e "$$src" ] && cmp -s "$$src" "$$dst"; then echo "rm -f $$dst"; rm -f "$$dst"; \
		else echo "uninstall: kept $$dst (edited; remove it by hand)"; fi; \
	done; rmdir $(DESTDIR)$(SYSCONFDIR)/giantvm 2>/dev/null || true

# A Debian package of the same files: build/giantvm_$(VERSION)_$(DEB_ARCH).deb.
DEB_ARCH   := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB        := build/giantvm_$(VERSION)_$(DEB_ARCH).deb
deb: all
	BUILD=$(BUILD) VERSION=$(VERSION) ARCH=$(DEB_ARCH) OUT=$(DEB) dist/debian/build-deb.sh

clean:
	rm -rf build build-asan build-fuzz

DEP_FILES := $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(PRE_OBJ:.o=.d) $(UNIT_BIN:=.d) $(INT_BIN:=.d)
$(DEP_FILES):
include $(wildcard $(DEP_FILES))
