# Harmony build. `make` builds harmonyd, the examples and the tests; `make test`
# runs the suite on every reactor backend this machine has (epoll and poll);
# `make test-windows` cross-builds for Windows (IOCP) and runs the same suite
# under Wine; `make demo` runs the balancer doing real work; `make check-all`
# runs every long check before a big merge. See README.md.

# One job per core unless the command line says otherwise (a -j there wins); the
# recursive makes share the top one's job slots.
ifeq ($(MAKELEVEL),0)
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)
endif

CXX      ?= g++
BUILD    ?= build
OPT      ?= -O2 -g
# WERROR=-Werror (CI sets it) turns every warning of every build into an error.
WERROR   ?=
WARN     := -Wall -Wextra -Wpedantic $(WERROR)
EXTRA    ?=
CXXFLAGS_ALL := -std=c++17 $(WARN) $(OPT) $(EXTRA) -pthread
LDLIBS   := -pthread
# A statically linked libstdc++ keeps an idle harmonyd under 2 MB of RSS: only
# the pages it touches are mapped, instead of the whole shared library.
DAEMON_LDFLAGS ?= -static-libstdc++ -static-libgcc

HEADER   := harmony.hpp
# harmony.hpp is assembled from the parts in src/ (see tools/assemble); the build
# and the tests use the assembled file, which is what users copy.
PARTS    := $(shell find src -name '*.hpp' 2>/dev/null)
# Three test programs per build: the sans-IO unit tests (tests/unit.cpp, which also
# compiles the implementation), once; the socket tests, once per reactor backend
# (each linked with the implementation compiled for it); the daemon tests, once,
# against that build's harmonyd.
SOCKET_SRC := $(filter-out tests/unit.cpp tests/daemon.cpp tests/main.cpp tests/implementation.cpp,$(wildcard tests/*.cpp))
TEST_HDR := $(wildcard tests/*.hpp)
SOCKET_OBJ := $(patsubst tests/%.cpp,$(BUILD)/tests/%.o,$(SOCKET_SRC))
EXAMPLES := $(patsubst examples/%.cpp,$(BUILD)/examples/%,$(wildcard examples/*.cpp))
BACKENDS := epoll poll

.SECONDARY:
.PHONY: FORCE check-all check-assembly all test test-build doctest demo sanitize tsan fuzz warnings compile-checks bench clean \
	windows-tools windows test-windows compile-checks-windows

all: harmonyd $(BUILD)/bin/harmonyd $(EXAMPLES) test-build

# What a build folder's objects were compiled with, rewritten only when that
# changes: every object depends on it, so a build with other flags in the same
# folder (WERROR=-Werror, say) compiles again instead of keeping stale objects.
FLAGS_STAMP := $(BUILD)/.flags
FLAGS_TEXT   = $(CXX) $(CXXFLAGS_ALL) $(DAEMON_LDFLAGS) | $(WIN_CXX) $(WIN_FLAGS)
$(FLAGS_STAMP): FORCE
	@mkdir -p $(dir $@)
	@[ "$$(cat $@ 2>/dev/null)" = '$(FLAGS_TEXT)' ] || echo '$(FLAGS_TEXT)' >$@
FORCE:

$(HEADER): $(PARTS) tools/assemble
	tools/assemble

# Fails when the committed harmony.hpp is not what its parts assemble to.
check-assembly:
	@tools/assemble --check

# Each build variant has its own daemon; ./harmonyd is the default build's.
$(BUILD)/bin/harmonyd: daemon/harmonyd.cpp $(HEADER) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_ALL) $< -o $@ $(DAEMON_LDFLAGS) $(LDLIBS)

harmonyd: daemon/harmonyd.cpp $(HEADER)
	@$(MAKE) --no-print-directory build/bin/harmonyd BUILD=build
	cp build/bin/harmonyd $@

$(BUILD)/examples/%: examples/%.cpp examples/tiny_http.hpp $(HEADER) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_ALL) $< -o $@ $(LDLIBS)

# doctest is the only test dependency; install it when missing and we are root.
doctest:
	@if ! echo '#include <doctest/doctest.h>' | $(CXX) -x c++ -fsyntax-only - 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing doctest-dev"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq doctest-dev) >/dev/null || exit 1; \
	  else \
	    echo "doctest is missing: run 'sudo apt-get install doctest-dev'" >&2; exit 1; \
	  fi; \
	fi

$(BUILD)/tests/%.o: tests/%.cpp $(HEADER) $(FLAGS_STAMP) $(TEST_HDR) | doctest
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_ALL) -c $< -o $@

# The library's implementation for one reactor backend.
$(BUILD)/lib/harmony-%.o: tests/implementation.cpp $(HEADER) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_ALL) -DHARMONY_USE_$(shell echo $* | tr a-z A-Z) -c $< -o $@

$(BUILD)/harmony-unit: $(BUILD)/tests/unit.o $(BUILD)/tests/main.o
	$(CXX) $(CXXFLAGS_ALL) $^ -o $@ $(LDLIBS)
$(BUILD)/harmony-tests-%: $(BUILD)/lib/harmony-%.o $(SOCKET_OBJ) $(BUILD)/tests/main.o
	$(CXX) $(CXXFLAGS_ALL) $^ -o $@ $(LDLIBS)
$(BUILD)/harmony-daemon-tests: $(BUILD)/lib/harmony-$(firstword $(BACKENDS)).o $(BUILD)/tests/daemon.o $(BUILD)/tests/main.o
	$(CXX) $(CXXFLAGS_ALL) $^ -o $@ $(LDLIBS)

TEST_PROGRAMS = $(BUILD)/harmony-unit $(foreach b,$(BACKENDS),$(BUILD)/harmony-tests-$(b)) $(BUILD)/harmony-daemon-tests
test-build: $(TEST_PROGRAMS)

# The daemon tests run this variant's harmonyd. TEST_RUNNER: a command to run
# the test programs under (setarch, for ThreadSanitizer). The programs run two at
# a time (TEST_JOBS): they wait on sockets far more than they compute.
TEST_RUNNER ?=
TEST_JOBS   ?= 2
test: test-build $(BUILD)/bin/harmonyd
	@HARMONYD=$(BUILD)/bin/harmonyd TEST_JOBS=$(TEST_JOBS) $(TEST_RUNNER) tests/run $(TEST_PROGRAMS)

# The suite again under AddressSanitizer and UndefinedBehaviorSanitizer, built with
# clang++: about twice as fast as g++ with these sanitizers (165 s against 325 s
# on two cores); g++ builds the rest.
# HARMONY_UBSAN tells the tests that UBSan checks the daemon (see the EMFILE test).
SANITIZE_CXX ?= clang++
sanitize:
	@HARMONY_UBSAN=1 $(MAKE) --no-print-directory test BUILD=build/sanitize CXX=$(SANITIZE_CXX) \
	  OPT="-O1 -g -fno-omit-frame-pointer" DAEMON_LDFLAGS= EXTRA="-fsanitize=address,undefined -fno-sanitize-recover=undefined"

# The suite again under ThreadSanitizer, on the epoll engine (the threaded
# parts are engine-independent). TSan needs its shadow memory where ASLR would
# put the program when the kernel randomises with more than 28 bits
# (vm.mmap_rnd_bits): then it runs without ASLR (setarch -R).
TSAN_CXX ?= clang++
tsan:
	@bits=$$(sysctl -n vm.mmap_rnd_bits 2>/dev/null || echo 0); run=; \
	  if [ "$$bits" -gt 28 ] && command -v setarch >/dev/null; then run="setarch $$(uname -m) -R"; fi; \
	  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 $${TSAN_OPTIONS:-}" \
	  $(MAKE) --no-print-directory test BUILD=build/tsan BACKENDS=epoll CXX=$(TSAN_CXX) \
	    OPT="-O1 -g -fno-omit-frame-pointer" DAEMON_LDFLAGS= EXTRA="-fsanitize=thread" TEST_RUNNER="$$run"

# libFuzzer: one target per parser of untrusted bytes, tests/fuzz/<target>.cpp,
# each replaying its seed corpus tests/fuzz/corpus/<target>/ and then fuzzing for
# FUZZ_SECONDS (what it finds goes to build/fuzz/corpus/<target>/, not into the
# repository; `make check-all` fuzzes a minute each). The targets compile the
# library header-only, so each compiles only the parsers it calls.
# A new target is one more name here, its .cpp and its seeds.
FUZZ_TARGETS := codec-legacy codec-native commands parsers split dns proxy-header state-file
FUZZ_SECONDS ?= 10
FUZZ_CXX     ?= clang++
FUZZ_FLAGS   := -std=c++17 $(WARN) -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=undefined -pthread
build/fuzz/%: tests/fuzz/%.cpp tests/fuzz/fuzz.hpp $(HEADER)
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) $(FUZZ_FLAGS) $< -o $@ -pthread

fuzz: $(foreach t,$(FUZZ_TARGETS),build/fuzz/$(t))
	@FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run $(FUZZ_TARGETS)

# Warning-free under both compilers, and the compile-time configurations. g++'s
# warnings need its optimiser, so they come from a real build (the default one,
# with -Werror; in CI every build has it already). clang++'s all come from its
# front end, so a syntax-only pass over every unit (the implementation once per
# engine) checks them for a fraction of a build.
CLANG_CXX    ?= clang++
CLANG_UNITS  := $(filter-out tests/implementation.cpp,$(wildcard tests/*.cpp tests/fuzz/*.cpp daemon/*.cpp examples/*.cpp))
CLANG_CHECKS := $(patsubst %.cpp,build/clang/%.ok,$(CLANG_UNITS)) $(foreach b,$(BACKENDS),build/clang/lib-$(b).ok)
CLANG_SYNTAX  = $(CLANG_CXX) -std=c++17 $(WARN) -Werror -pthread -fsyntax-only
build/clang/%.ok: %.cpp $(HEADER) $(TEST_HDR) $(wildcard tests/fuzz/*.hpp examples/*.hpp) | doctest
	@mkdir -p $(dir $@)
	$(CLANG_SYNTAX) $<
	@touch $@
build/clang/lib-%.ok: tests/implementation.cpp $(HEADER)
	@mkdir -p $(dir $@)
	$(CLANG_SYNTAX) -DHARMONY_USE_$(shell echo $* | tr a-z A-Z) $<
	@touch $@
warnings: $(CLANG_CHECKS)
	@$(MAKE) --no-print-directory all WERROR=-Werror
	@$(MAKE) --no-print-directory compile-checks

compile-checks: | doctest
	@tests/compile/run $(CXX)

# ---- Windows: a MinGW-w64 cross build (the IOCP engine) and the suite under Wine.
# Link -static: otherwise the programs need libwinpthread-1.dll and, under Wine
# with WINEDEBUG=-all, exit silently without it.
WIN_CXX      ?= x86_64-w64-mingw32-g++-posix
WIN_BUILD    := $(BUILD)/windows
WIN_FLAGS    := -std=c++17 $(WARN) $(OPT) $(EXTRA) -I$(WIN_BUILD)/include
WIN_LIBS     := -static -lws2_32 -lmswsock
WIN_PACKAGES := g++-mingw-w64-x86-64-posix wine wine64
# The unit tests and the socket tests as Windows programs. tests/daemon.cpp drives
# harmonyd as a POSIX process (posix_spawn, signals): the native daemon tests
# drive harmonyd.exe under Wine instead.
WIN_SOCKET_OBJ := $(patsubst tests/%.cpp,$(WIN_BUILD)/tests/%.o,$(SOCKET_SRC))
WIN_EXAMPLES := $(patsubst examples/%.cpp,$(WIN_BUILD)/examples/%.exe,$(wildcard examples/*.cpp))

# Installs the cross compiler and Wine when missing and we are root; doctest is
# header-only, so the cross build reads the Debian copy through a link of its own.
windows-tools: | doctest
	@missing=$$(for p in $(WIN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing" $$missing; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null || exit 1; \
	  else \
	    echo "missing:" $$missing "- run 'sudo apt-get install --no-install-recommends" $$missing"'" >&2; exit 1; \
	  fi; \
	fi
	@mkdir -p $(WIN_BUILD)/include
	@ln -sfn /usr/include/doctest $(WIN_BUILD)/include/doctest

harmonyd.exe: daemon/harmonyd.cpp $(HEADER) $(FLAGS_STAMP) | windows-tools
	$(WIN_CXX) $(WIN_FLAGS) $< -o $@ $(WIN_LIBS)

$(WIN_BUILD)/examples/%.exe: examples/%.cpp $(HEADER) $(FLAGS_STAMP) | windows-tools
	@mkdir -p $(dir $@)
	$(WIN_CXX) $(WIN_FLAGS) $< -o $@ $(WIN_LIBS)

$(WIN_BUILD)/tests/%.o: tests/%.cpp $(HEADER) $(FLAGS_STAMP) $(TEST_HDR) | windows-tools
	@mkdir -p $(dir $@)
	$(WIN_CXX) $(WIN_FLAGS) -c $< -o $@

$(WIN_BUILD)/lib/harmony-iocp.o: tests/implementation.cpp $(HEADER) $(FLAGS_STAMP) | windows-tools
	@mkdir -p $(dir $@)
	$(WIN_CXX) $(WIN_FLAGS) -DHARMONY_USE_IOCP -c $< -o $@

$(WIN_BUILD)/harmony-unit.exe: $(WIN_BUILD)/tests/unit.o $(WIN_BUILD)/tests/main.o
	$(WIN_CXX) $(WIN_FLAGS) $^ -o $@ $(WIN_LIBS)
$(WIN_BUILD)/harmony-tests-iocp.exe: $(WIN_BUILD)/lib/harmony-iocp.o $(WIN_SOCKET_OBJ) $(WIN_BUILD)/tests/main.o
	$(WIN_CXX) $(WIN_FLAGS) $^ -o $@ $(WIN_LIBS)

windows: harmonyd.exe $(WIN_EXAMPLES) $(WIN_BUILD)/harmony-unit.exe $(WIN_BUILD)/harmony-tests-iocp.exe

# The daemon tests are the native program of this build, driving harmonyd.exe
# under Wine: Linux-side clients and backends, the Windows daemon in between. The
# wrapper execs into Wine, so the PID the tests signal is the Windows process;
# Windows has no SIGTERM (Wine ends a program outright on it), so the polite stop
# there is SIGINT, which arrives as Ctrl-C.
$(WIN_BUILD)/harmonyd-wine: tests/wine-run | windows-tools
	@printf '#!/bin/sh\n# harmonyd.exe under Wine as one process (made by make test-windows)\nWINE_RUN_EXEC=1 exec "%s/tests/wine-run" "%s/harmonyd.exe" "$$@"\n' "$(CURDIR)" "$(CURDIR)" >$@
	@chmod +x $@

# The Windows compile checks, then the whole suite on the IOCP engine under Wine
# (tests/wine-run keeps its prefix in ~/.cache/harmony-wine) and the daemon
# tests against harmonyd.exe under Wine. The last line of output is tests/run's
# "N passed, N failed".
# One wineserver serves the whole run and is ended with it (see tests/wine-run).
test-windows: windows compile-checks-windows $(BUILD)/harmony-daemon-tests $(WIN_BUILD)/harmonyd-wine
	@tests/wine-run --start; trap 'tests/wine-run --stop' EXIT; \
	  for check in $(WIN_RUN_CHECKS); do tests/wine-run $$check || { echo "$$check failed"; exit 1; }; done; \
	  HARMONYD=$(WIN_BUILD)/harmonyd-wine HARMONYD_STOP_SIGNAL=INT \
	    tests/run $(WIN_BUILD)/harmony-unit.exe $(WIN_BUILD)/harmony-tests-iocp.exe $(BUILD)/harmony-daemon-tests

# The compile checks for the MinGW build, each its own target (they build side by
# side): the implementation after a plain <windows.h>; the implementation in one
# unit and the public half in another, linked; header-only in two units; the
# declarations-only half (no OS header leaks); -fno-exceptions -fno-rtti; every
# symbol the IOCP implementation defines is in namespace harmony (as
# tests/compile/run checks on Linux). test-windows runs the linked programs.
WIN_CHECK = $(WIN_CXX) $(WIN_FLAGS) -Werror
WIN_NM   ?= x86_64-w64-mingw32-nm
WIN_COMPILE := $(WIN_BUILD)/compile
WIN_RUN_CHECKS := $(WIN_COMPILE)/two-units.exe $(WIN_COMPILE)/header-only.exe
$(WIN_COMPILE)/%.o: tests/compile/%.cpp $(HEADER) | windows-tools
	@mkdir -p $(dir $@)
	$(WIN_CHECK) -c $< -o $@
$(WIN_COMPILE)/two-units.exe: tests/compile/two_units_a.cpp tests/compile/two_units_b.cpp $(HEADER) | windows-tools
	@mkdir -p $(dir $@)
	$(WIN_CHECK) $(filter %.cpp,$^) -o $@ $(WIN_LIBS)
$(WIN_COMPILE)/header-only.exe: tests/compile/header_only_a.cpp tests/compile/header_only_b.cpp $(HEADER) | windows-tools
	@mkdir -p $(dir $@)
	$(WIN_CHECK) -DHARMONY_HEADER_ONLY $(filter %.cpp,$^) -o $@ $(WIN_LIBS)
$(WIN_COMPILE)/no-exceptions.exe: tests/compile/implementation.cpp $(HEADER) | windows-tools
	@mkdir -p $(dir $@)
	$(WIN_CHECK) -fno-exceptions -fno-rtti $< -o $@ $(WIN_LIBS)
compile-checks-windows: $(WIN_COMPILE)/windows_first.o $(WIN_COMPILE)/declarations_only.o \
	  $(WIN_COMPILE)/no-exceptions.exe $(WIN_RUN_CHECKS) $(WIN_BUILD)/lib/harmony-iocp.o
	@$(WIN_NM) --defined-only -g $(WIN_BUILD)/lib/harmony-iocp.o | awk '{print $$3}' | grep -v 7harmony \
	  | grep -vE '^(_Z+(nw|na|dl|da|N?K?S|N?K?9__gnu_cxx|T[VIS]|GV)|DW\.ref\.__gxx_personality)' \
	  | (! grep .) || { echo "symbols outside namespace harmony (above)"; exit 1; }
	@echo "windows compile checks built"

# Everything CI runs, one step after another, with a minute of fuzzing per target
# instead of ten seconds: before a big merge.
CHECK_ALL_STEPS := check-assembly test sanitize tsan warnings demo test-install test-windows
check-all:
	@for goal in $(CHECK_ALL_STEPS); do $(MAKE) --no-print-directory $$goal || exit 1; done
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=60

demo: harmonyd $(BUILD)/examples/harmonyjs $(BUILD)/examples/backend
	$(BUILD)/examples/harmonyjs
	examples/multi-host.sh

bench: harmonyd
	bench/run

clean:
	rm -rf build harmonyd harmonyd.exe

# ---- Install and packaging: make install [PREFIX=/usr/local] [DESTDIR=staging];
# make uninstall with the same variables; make test-install checks an install
# into a staging directory (tests/install/run: consumers through pkg-config and
# find_package, the man page, the systemd unit). The CMake build installs the
# same files (CMakeLists.txt).
PREFIX         ?= /usr/local
BINDIR         ?= $(PREFIX)/bin
INCLUDEDIR     ?= $(PREFIX)/include
LIBDIR         ?= $(PREFIX)/lib
MANDIR         ?= $(PREFIX)/share/man
DOCDIR         ?= $(PREFIX)/share/doc/harmony
SYSCONFDIR     ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
INSTALL        ?= install
HARMONY_VERSION_TEXT = $(shell awk '/^\#define HARMONY_VERSION_(MAJOR|MINOR|PATCH) /{v = v (v == "" ? "" : ".") $$3} END {print v}' $(HEADER))
SUBSTITUTE = sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' \
  -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@VERSION@|$(HARMONY_VERSION_TEXT)|g' \
  -e 's|@MAJOR@|$(firstword $(subst ., ,$(HARMONY_VERSION_TEXT)))|g'

.PHONY: install uninstall test-install
# The example configuration becomes SYSCONFDIR/harmony/harmonyd.conf unless one is
# there already: an operator's file is never overwritten.
install: harmonyd
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR)/pkgconfig \
	  $(DESTDIR)$(LIBDIR)/cmake/harmony $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR)/examples \
	  $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(SYSCONFDIR)/harmony
	$(INSTALL) -m 755 harmonyd $(DESTDIR)$(BINDIR)/harmonyd
	$(INSTALL) -m 644 $(HEADER) $(DESTDIR)$(INCLUDEDIR)/harmony.hpp
	$(SUBSTITUTE) packaging/harmony.pc.in >$(DESTDIR)$(LIBDIR)/pkgconfig/harmony.pc
	$(SUBSTITUTE) packaging/harmony-config.cmake.in >$(DESTDIR)$(LIBDIR)/cmake/harmony/harmony-config.cmake
	$(SUBSTITUTE) packaging/harmony-config-version.cmake.in >$(DESTDIR)$(LIBDIR)/cmake/harmony/harmony-config-version.cmake
	$(INSTALL) -m 644 docs/harmonyd.8 $(DESTDIR)$(MANDIR)/man8/harmonyd.8
	$(INSTALL) -m 644 examples/harmonyd.conf $(DESTDIR)$(DOCDIR)/examples/harmonyd.conf
	$(SUBSTITUTE) packaging/harmonyd.service.in >$(DESTDIR)$(SYSTEMDUNITDIR)/harmonyd.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/harmony/harmonyd.conf ]; then \
	  echo "kept $(DESTDIR)$(SYSCONFDIR)/harmony/harmonyd.conf"; \
	else $(INSTALL) -m 644 examples/harmonyd.conf $(DESTDIR)$(SYSCONFDIR)/harmony/harmonyd.conf; fi

# Leaves SYSCONFDIR/harmony/harmonyd.conf, which is the operator's.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/harmonyd $(DESTDIR)$(INCLUDEDIR)/harmony.hpp $(DESTDIR)$(LIBDIR)/pkgconfig/harmony.pc \
	  $(DESTDIR)$(LIBDIR)/cmake/harmony/harmony-config.cmake $(DESTDIR)$(LIBDIR)/cmake/harmony/harmony-config-version.cmake \
	  $(DESTDIR)$(MANDIR)/man8/harmonyd.8 $(DESTDIR)$(DOCDIR)/examples/harmonyd.conf \
	  $(DESTDIR)$(SYSTEMDUNITDIR)/harmonyd.service
	-rmdir $(DESTDIR)$(LIBDIR)/cmake/harmony $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR) 2>/dev/null

test-install: harmonyd
	@CXX=$(CXX) tests/install/run
