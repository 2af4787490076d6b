# Dust. `make demo` builds everything and serves one request through a fresh
# machine per example; `make test` runs the whole test suite.

GO      ?= go
BIN     := bin/dust
FUZZTIME ?= 60s

.PHONY: all build examples demo test test-go test-guest lint fuzz fuzz-seed bench clean

all: build examples

build:
	@mkdir -p bin
	$(GO) build -o $(BIN) ./cmd/dust

examples:
	$(MAKE) -s -C guest lib examples

# The local dev loop on the examples (the HTTP gateway comes with issue 4).
demo: build examples
	@for app in hello echo sha256; do \
		echo "== dust run examples/$$app/$$app.elf"; \
		./$(BIN) run -v -X POST --path "/$$app/demo?x=1" -H 'X-Demo: yes' \
			--data 'hello from the dust cloud' examples/$$app/$$app.elf || exit $$?; \
		echo; \
	done

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test-guest:
	$(MAKE) -s -C guest test

test-go: examples
	$(GO) test -count=1 ./...

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

bench: examples
	$(GO) test -run='^$$' -bench=. -benchtime=2000x -count=1 ./internal/hvt/ ./internal/cgi/

clean:
	rm -rf bin
	$(MAKE) -s -C guest clean
