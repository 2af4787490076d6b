# Dust. `make demo` builds everything and runs the gateway with the examples
# deployed; `make test` runs the whole test suite.

GO      ?= go
BIN     := bin/dust
FUZZTIME ?= 60s

.PHONY: all build examples wasm-examples demo test test-go test-guest lint fuzz fuzz-seed bench soak clean

all: build examples

build:
	@mkdir -p bin
	$(GO) build -buildvcs=auto -o $(BIN) ./cmd/dust

# libdust examples (examples/NAME/NAME.elf), then the ordinary static
# Linux programs (examples/linux/linux.mk: gcc -static, musl-gcc, Lua).
examples:
	$(MAKE) -s -C guest lib examples
	$(MAKE) -s -f examples/linux/linux.mk GO=$(GO)

# The examples as WASI preview 1 modules (examples/NAME/NAME.wasm) for the
# wasm kind: clang + wasi-libc for C, GOOS=wasip1 for Go.
wasm-examples:
	$(MAKE) -s -f examples/wasm.mk GO=$(GO)

# The gateway with the examples deployed, on the embedded store in
# DEMO_DATA (Ctrl-C stops it cleanly).
DEMO_DATA ?= $(HOME)/.local/share/dust
demo: build examples
	@$(MAKE) -s -k -f examples/wasm.mk GO=$(GO) 2>/dev/null || \
		echo "note: some wasm examples not built (C ones need: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)"
	./$(BIN) serve --demo --data $(DEMO_DATA)

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test-guest:
	$(MAKE) -s -C guest test

# The hvt suite runs a second time with every shared-helper machine
# restored from an earlier request instead of newly created
# (DUST_HVT_ISOLATION, internal/hvt/examples_test.go): every hvt test in
# both isolation modes.
test-go: examples
	$(GO) test -count=1 ./...
	DUST_HVT_ISOLATION=restore $(GO) test -count=1 ./internal/hvt/
	$(GO) test -race -count=1 ./internal/linux/

# Everything CI runs: lint, guest host-side tests, Go tests (KVM ones
# included; DUST_REQUIRE_KVM=1 makes a missing /dev/kvm fatal) and the
# fuzz seed corpora (they run as part of go test).
test: lint test-guest test-go

# Run each fuzz target for FUZZTIME.
fuzz:
	@for t in $$(grep -rho 'func Fuzz[A-Za-z0-9_]*' --include='*_test.go' internal | sed 's/func //'); do \
		pkg=$$(grep -rl "func $$t(" --include='*_test.go' internal | head -1 | xargs dirname); \
		echo "== $$t ($$pkg)"; \
		$(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) ./$$pkg || exit 1; \
	done

# A mixed load of good and hostile apps through the gateway at concurrency
# 64 for SOAK (default 10m), then checks statuses and fds/threads/RSS.
SOAK ?= 10m
soak: examples
	DUST_SOAK=$(SOAK) $(GO) test -count=1 -run '^TestSoak$$' -v -timeout 0 ./internal/gateway/

# Go benchmarks per package, then `dust bench`: every contender side by
# side in one run (BENCHFLAGS: e.g. --quick, --duration 2m, --json); it
# writes its SVG charts and report.json to docs/bench/. bench/setup.sh
# installs QEMU and the wasm toolchain.
BENCHFLAGS ?=
bench: build examples
	@$(MAKE) -s -k -f examples/wasm.mk GO=$(GO) 2>/dev/null || \
		echo "note: some wasm examples not built (run bench/setup.sh); their rows will say skipped"
	$(GO) test -run='^$$' -bench=. -benchtime=2000x -count=1 ./internal/hvt/ ./internal/wasm/ ./internal/cgi/
	./$(BIN) bench $(BENCHFLAGS)

clean:
	rm -rf bin
	$(MAKE) -s -C guest clean
	$(MAKE) -s -f examples/linux/linux.mk clean
