# Ordinary static Linux programs for the hvt kind (docs/linux-abi.md),
# built with the host's own toolchains instead of libdust:
#
#   form/form-glibc.elf  examples/linux/form/form.c, gcc -static
#   form/form-musl.elf   the same with musl-gcc -static (Debian: musl-tools)
#   lua/lua-host.elf     examples/linux/lua/host.c with Debian's liblua5.4.a
#                        (liblua5.4-dev), gcc -static
#   gocgi/gocgi-go.elf   examples/linux/gocgi, an unmodified Go net/http/cgi
#                        program, CGO_ENABLED=0 GOOS=linux
#   go-fast-hello/go-fast-hello-linux.elf
#                        examples/go-fast-hello (package dustgo) for Linux:
#                        snapshotted at its ready point, once per deploy
#   goserver/goserver-go.elf   an unmodified Go net/http server (--serve http)
#   cserver/cserver-glibc.elf  a small C HTTP server, gcc -static (--serve http)
#
#   make -f examples/linux/linux.mk           builds them in examples/linux/
#   make -f examples/linux/linux.mk OUT=DIR   builds DIR/form/... instead
#
# A missing toolchain skips its programs with a note and fails nothing. The
# apps' read-only files are form/app/ and lua/app/ (served at /app).
#
# These live under examples/linux/ and are named NAME-VARIANT.elf so that
# guest/Makefile, which links every examples/NAME/NAME.c against libdust,
# never picks them up.

LXDIR    := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
OUT      ?= $(LXDIR)
GCC      ?= gcc
MUSL_CC  ?= musl-gcc
CFLAGS_LINUX ?= -O2 -Wall -Wextra
LUA_INC  ?= /usr/include/lua5.4
GO       ?= go
ROOT     := $(patsubst %/,%,$(dir $(patsubst %/,%,$(dir $(LXDIR)))))
GO_LINUX := cd $(ROOT) && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath

HAVE_MUSL := $(shell command -v $(MUSL_CC) 2>/dev/null)
# gcc prints the bare name back when it cannot find the library.
LUA_LIB   := $(shell $(GCC) -print-file-name=liblua5.4.a)
HAVE_LUA  := $(and $(filter /%,$(LUA_LIB)),$(wildcard $(LUA_INC)/lua.h))

ALL  := $(OUT)/form/form-glibc.elf $(OUT)/cserver/cserver-glibc.elf
SKIP :=
ifneq ($(shell command -v $(GO) 2>/dev/null),)
ALL  += $(OUT)/gocgi/gocgi-go.elf $(OUT)/go-fast-hello/go-fast-hello-linux.elf $(OUT)/goserver/goserver-go.elf
else
SKIP += "the Go programs: $(GO) not found"
endif
ifneq ($(HAVE_MUSL),)
ALL  += $(OUT)/form/form-musl.elf
else
SKIP += "form/form-musl.elf: $(MUSL_CC) not found (Debian: apt-get install musl-tools)"
endif
ifneq ($(HAVE_LUA),)
ALL  += $(OUT)/lua/lua-host.elf
else
SKIP += "lua/lua-host.elf: liblua5.4.a or $(LUA_INC)/lua.h not found (Debian: apt-get install liblua5.4-dev)"
endif

.PHONY: all clean
all: $(ALL)
	@for m in $(SKIP); do echo "note: skipping $$m"; done

$(OUT)/form/form-glibc.elf: $(LXDIR)/form/form.c $(LXDIR)/linux.mk
	@mkdir -p $(@D)
	$(GCC) -static $(CFLAGS_LINUX) -o $@ $< -lm

$(OUT)/form/form-musl.elf: $(LXDIR)/form/form.c $(LXDIR)/linux.mk
	@mkdir -p $(@D)
	$(MUSL_CC) -static $(CFLAGS_LINUX) -o $@ $< -lm

# liblua's package library refers to dlopen, which glibc warns about in a
# static program; the host empties package.cpath, so it is never called.
$(OUT)/lua/lua-host.elf: $(LXDIR)/lua/host.c $(LXDIR)/linux.mk
	@mkdir -p $(@D)
	@$(GCC) -static $(CFLAGS_LINUX) -I$(LUA_INC) -o $@ $< -llua5.4 -lm 2>$@.log; st=$$?; \
		grep -v -e "in function .lookforfunc'" -e "Using 'dlopen' in statically linked" $@.log >&2; \
		rm -f $@.log; exit $$st

# The go command decides whether a Go program is out of date.
.PHONY: $(OUT)/gocgi/gocgi-go.elf $(OUT)/go-fast-hello/go-fast-hello-linux.elf $(OUT)/goserver/goserver-go.elf
$(OUT)/gocgi/gocgi-go.elf:
	@mkdir -p $(@D)
	$(GO_LINUX) -o $@ ./examples/linux/gocgi

$(OUT)/go-fast-hello/go-fast-hello-linux.elf:
	@mkdir -p $(@D)
	$(GO_LINUX) -o $@ ./examples/go-fast-hello

$(OUT)/goserver/goserver-go.elf:
	@mkdir -p $(@D)
	$(GO_LINUX) -o $@ ./examples/linux/goserver

$(OUT)/cserver/cserver-glibc.elf: $(LXDIR)/cserver/cserver.c $(LXDIR)/linux.mk
	@mkdir -p $(@D)
	$(GCC) -static $(CFLAGS_LINUX) -o $@ $<

clean:
	rm -f $(OUT)/form/form-glibc.elf $(OUT)/form/form-musl.elf $(OUT)/lua/lua-host.elf
	rm -f $(OUT)/gocgi/gocgi-go.elf $(OUT)/go-fast-hello/go-fast-hello-linux.elf
	rm -f $(OUT)/goserver/goserver-go.elf $(OUT)/cserver/cserver-glibc.elf
