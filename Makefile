# giantvm: `make` builds build/giantvm and build/libgiantvm-preload.so;
# `make test` runs every test; `make demo` boots a small guest on an embedded pool.
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

install: all
	install -D -m 755 $(BUILD)/giantvm $(DESTDIR)$(PREFIX)/bin/giantvm
	install -D -m 755 $(BUILD)/libgiantvm-preload.so $(DESTDIR)$(PREFIX)/lib/giantvm/libgiantvm-preload.so
	install -D -m 644 $(BUILD)/libgiantvm.a $(DESTDIR)$(PREFIX)/lib/libgiantvm.a
	install -d $(DESTDIR)$(PREFIX)/include
	install -m 644 include/giantvm.h include/giantvm_memserver.h include/giantvm_ctl.h $(DESTDIR)$(PREFIX)/include/

clean:
	rm -rf build build-asan build-fuzz

DEP_FILES := $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(PRE_OBJ:.o=.d) $(UNIT_BIN:=.d) $(INT_BIN:=.d)
$(DEP_FILES):
include $(wildcard $(DEP_FILES))
