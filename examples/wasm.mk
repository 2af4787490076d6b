# The examples as WebAssembly (WASI preview 1) modules for the wasm machine
# kind: the C ones with Debian's clang and wasi-libc (apt: clang lld
# wasi-libc libclang-rt-14-dev-wasm32), the Go ones with GOOS=wasip1, the
# go-fast ones (package dustgo) as reactors: -buildmode=c-shared.
#
#   make -f examples/wasm.mk            builds examples/NAME/NAME.wasm
#   make -f examples/wasm.mk OUT=DIR    builds DIR/NAME/NAME.wasm instead
#
# lua/lua.wasm is the Lua 5.4 interpreter, built by lua/build.sh from
# Debian's lua5.4 source package, which it fetches with apt-get into
# LUA_CACHE (gitignored) the first time; when the archive cannot be reached
# it says so and is skipped, and the other examples build as usual.
#
# Only the C examples that are plain C build: the ones using libdust's
# hypercalls or x86 instructions (badptr, secret, illegal) are hvt-only, and crash
# is not a fault in wasm (address 0x10 is ordinary linear memory).

EXDIR    := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
ROOT     := $(abspath $(EXDIR)/..)
OUT      ?= $(EXDIR)
GO       ?= go
WASM_CC  ?= clang
# No -g: names from the name section are enough for trap reports.
WASM_CFLAGS ?= --target=wasm32-wasi -O2 -Wall -Wextra

C_EXAMPLES  := hello echo sha256 exitcode loop oom flood logflood trap counter
GO_EXAMPLES := go-hello go-echo
GO_REACTORS := go-fast-hello go-fast-echo go-rand
LUA_CACHE ?= $(ROOT)/.cache/lua
ALL := $(foreach n,$(C_EXAMPLES) $(GO_EXAMPLES) $(GO_REACTORS),$(OUT)/$(n)/$(n).wasm) $(OUT)/lua/lua.wasm

.PHONY: all clean
all: $(ALL)

$(foreach n,$(C_EXAMPLES),$(eval $(OUT)/$(n)/$(n).wasm: $(EXDIR)/$(n)/$(n).c ; @mkdir -p $$(@D) && $$(WASM_CC) $$(WASM_CFLAGS) -o $$@ $$<))

# go build decides itself what is out of date.
.PHONY: $(foreach n,$(GO_EXAMPLES),$(OUT)/$(n)/$(n).wasm)
$(foreach n,$(GO_EXAMPLES),$(eval $(OUT)/$(n)/$(n).wasm: ; @mkdir -p $$(@D) && cd $(ROOT) && GOOS=wasip1 GOARCH=wasm $$(GO) build -trimpath -o $$@ ./examples/$(n)))

.PHONY: $(foreach n,$(GO_REACTORS),$(OUT)/$(n)/$(n).wasm)
$(foreach n,$(GO_REACTORS),$(eval $(OUT)/$(n)/$(n).wasm: ; @mkdir -p $$(@D) && cd $(ROOT) && GOOS=wasip1 GOARCH=wasm $$(GO) build -trimpath -buildmode=c-shared -o $$@ ./examples/$(n)))

$(OUT)/lua/lua.wasm: $(EXDIR)/lua/build.sh $(wildcard $(EXDIR)/lua/wasi/*)
	@sh $(EXDIR)/lua/build.sh $@ $(LUA_CACHE) $(WASM_CC)

clean:
	rm -f $(ALL)
