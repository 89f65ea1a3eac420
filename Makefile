# Harmony build. `make` builds harmonyd, the examples and the tests; `make test`
# runs the suite on every reactor backend this machine has (epoll and poll);
# `make demo` runs the balancer doing real work. See README.md.

CXX      ?= g++
BUILD    ?= build
OPT      ?= -O2 -g
WARN     := -Wall -Wextra -Wpedantic
EXTRA    ?=
CXXFLAGS_ALL := -std=c++17 $(WARN) $(OPT) $(EXTRA) -pthread
LDLIBS   := -pthread
# A statically linked libstdc++ keeps an idle harmonyd under 2 MB of RSS: only
# the pages it touches are mapped, instead of the whole shared library.
DAEMON_LDFLAGS ?= -static-libstdc++ -static-libgcc

HEADER   := harmony.hpp
TEST_SRC := $(filter-out tests/unit.cpp,$(wildcard tests/*.cpp))
TEST_HDR := $(wildcard tests/*.hpp)
TEST_OBJ := $(patsubst tests/%.cpp,$(BUILD)/tests/%.o,$(TEST_SRC))
EXAMPLES := $(patsubst examples/%.cpp,$(BUILD)/examples/%,$(wildcard examples/*.cpp))
BACKENDS := epoll poll

.SECONDARY:
.PHONY: all test test-build doctest demo sanitize warnings compile-checks bench clean

all: harmonyd $(BUILD)/bin/harmonyd $(EXAMPLES) test-build

# Each build variant has its own daemon; ./harmonyd is the default build's.
$(BUILD)/bin/harmonyd: daemon/harmonyd.cpp $(HEADER)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_ALL) $< -o $@ $(DAEMON_LDFLAGS) $(LDLIBS)

harmonyd: daemon/harmonyd.cpp $(HEADER)
	@$(MAKE) --no-print-directory build/bin/harmonyd BUILD=build
	cp build/bin/harmonyd $@

$(BUILD)/examples/%: examples/%.cpp examples/tiny_http.hpp $(HEADER)
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

$(BUILD)/tests/%.o: tests/%.cpp $(HEADER) $(TEST_HDR) | doctest
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_ALL) -c $< -o $@

# The implementation unit is compiled once per reactor backend.
$(BUILD)/tests/unit-epoll.o: tests/unit.cpp $(HEADER) | doctest
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_ALL) -DHARMONY_USE_EPOLL -c $< -o $@
$(BUILD)/tests/unit-poll.o: tests/unit.cpp $(HEADER) | doctest
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_ALL) -DHARMONY_USE_POLL -c $< -o $@

$(BUILD)/harmony-tests-%: $(BUILD)/tests/unit-%.o $(TEST_OBJ)
	$(CXX) $(CXXFLAGS_ALL) $^ -o $@ $(LDLIBS)

test-build: $(foreach b,$(BACKENDS),$(BUILD)/harmony-tests-$(b))

# The daemon tests run this variant's harmonyd.
test: test-build $(BUILD)/bin/harmonyd
	@HARMONYD=$(BUILD)/bin/harmonyd tests/run $(foreach b,$(BACKENDS),$(BUILD)/harmony-tests-$(b))

# The suite again under AddressSanitizer and UndefinedBehaviorSanitizer.
sanitize:
	@$(MAKE) --no-print-directory test BUILD=build/sanitize OPT="-O1 -g -fno-omit-frame-pointer" DAEMON_LDFLAGS= \
	  EXTRA="-fsanitize=address,undefined -fno-sanitize-recover=undefined"

# Warning-free under both compilers, and the compile-time configurations.
warnings:
	@$(MAKE) --no-print-directory all BUILD=build/gcc CXX=g++ EXTRA=-Werror
	@$(MAKE) --no-print-directory all BUILD=build/clang CXX=clang++ EXTRA=-Werror
	@$(MAKE) --no-print-directory compile-checks

compile-checks: | doctest
	@tests/compile/run $(CXX)

demo: harmonyd $(BUILD)/examples/harmonyjs $(BUILD)/examples/backend
	$(BUILD)/examples/harmonyjs
	examples/multi-host.sh

bench: harmonyd
	bench/run

clean:
	rm -rf build harmonyd harmonyd.exe
