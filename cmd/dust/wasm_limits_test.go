package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Hostile wasm modules deployed to a real `dust serve`: each is refused
// with 422 naming the bound it exceeds, and the server, which a 42-byte
// module used to kill with an out-of-memory fatal error, goes on serving
// the app deployed before them.
func TestWasmLimitsThroughServer(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a server: skipped with -short")
	}
	dir, bin := buildDust(t)
	p := startServe(t, bin, filepath.Join(dir, "data"))
	defer func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.cmd.Wait()
	}()
	hello, err := os.ReadFile(goWasm(t, "../../examples/go-hello"))
	if err != nil {
		t.Fatal(err)
	}
	if code, body := deployWasm(t, p, "good", "route=/good", hello); code != http.StatusOK {
		t.Fatalf("deploying go-hello: %d %s", code, body)
	}
	fortyTwo := wasmCommand(nil, nil, wasmLocals(0xfffffff0))
	if len(fortyTwo) != 42 {
		t.Fatalf("the module is %d bytes, want 42", len(fortyTwo))
	}
	deep := append([]byte{0}, bytes.Repeat([]byte{0x02, 0x40}, 100_000)...)
	deep = append(deep, bytes.Repeat([]byte{0x0b}, 100_001)...)
	tiny := make([][]byte, 500_000)
	for i := range tiny {
		tiny[i] = []byte{0, 0x0b}
	}
	// table.fill 0 (i32.const 0, ref.null func, i32.const 100,000,000)
	fill := []byte{0, 0x41, 0, 0xd0, 0x70, 0x41, 0x80, 0xc2, 0xd7, 0x2f, 0xfc, 17, 0, 0x0b}
	cases := []struct {
		name, query string
		image       []byte
		want        string
	}{
		{"42 bytes, 0xFFFFFFF0 locals", "", fortyTwo, "function 0 declares 4294967280 locals; the limit is 50000"},
		{"50M locals", "", wasmCommand(nil, nil, wasmLocals(50_000_000)), "function 0 declares 50000000 locals; the limit is 50000"},
		{"100M-entry table", "memory=1048576", wasmCommand(uleb([]byte{1, 0x70, 0}, 100_000_000), nil, fill), "tables start with 100000000 entries; the limit is 131072"},
		{"100k-deep nesting", "", wasmCommand(nil, nil, deep), "function 0 nests blocks 100000 deep; the limit is 10000"},
		{"500k functions", "", wasmCommand(nil, nil, tiny...), "declares 500000 functions; the limit is 100000"},
		{"hidden memory", "memory=1048576", wasmCommand(nil, uleb([]byte{1, 0}, 1000), []byte{0, 0x0b}), "memory 0 starts at 64000 KiB, over the 1024 KiB limit"},
	}
	for _, c := range cases {
		code, body := deployWasm(t, p, "hostile", "route=/hostile&"+c.query, c.image)
		if code != http.StatusUnprocessableEntity || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s, want 422 naming %q", c.name, code, body, c.want)
		}
	}
	resp, err := http.Get("http://" + p.app + "/good")
	if err != nil {
		t.Fatalf("the server stopped serving: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasSuffix(string(body), "Hello, world!\n") {
		t.Fatalf("go-hello after the hostile deploys: %d %q", resp.StatusCode, body)
	}
}

func deployWasm(t *testing.T, p *serveProc, name, query string, img []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("PUT", "http://"+p.admin+"/v1/apps/"+name+"?"+query, bytes.NewReader(img))
	req.Header.Set("Authorization", "Bearer "+p.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("deploy %s: %v", name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// wasmCommand assembles a module of functions of type () -> (), the first
// exported as _start, with an optional table and memory section.
func wasmCommand(tables, memories []byte, bodies ...[]byte) []byte {
	sec := func(id byte, body []byte) []byte { return append(uleb([]byte{id}, uint32(len(body))), body...) }
	m := []byte("\x00asm\x01\x00\x00\x00")
	m = append(m, sec(1, []byte{1, 0x60, 0, 0})...)
	m = append(m, sec(3, append(uleb(nil, uint32(len(bodies))), make([]byte, len(bodies))...))...)
	if tables != nil {
		m = append(m, sec(4, tables)...)
	}
	if memories != nil {
		m = append(m, sec(5, memories)...)
	}
	m = append(m, sec(7, append([]byte{1, 6}, "_start\x00\x00"...))...)
	code := uleb(nil, uint32(len(bodies)))
	for _, b := range bodies {
		code = append(uleb(code, uint32(len(b))), b...)
	}
	return append(m, sec(10, code)...)
}

// wasmLocals is a function body declaring n i32 locals.
func wasmLocals(n uint32) []byte { return append(uleb([]byte{1}, n), 0x7f, 0x0b) }

func uleb(b []byte, v uint32) []byte {
	for ; v >= 0x80; v >>= 7 {
		b = append(b, byte(v)|0x80)
	}
	return append(b, byte(v))
}
