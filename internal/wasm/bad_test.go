package wasm

import (
	"errors"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/machine"
)

// wasmModule assembles a minimal core module: one function of type
// () -> (), preceded by the given function imports (same type), exported
// under each of exports.
func wasmModule(imports [][2]string, exports ...string) []byte {
	vec := func(items ...[]byte) []byte {
		out := []byte{byte(len(items))}
		for _, it := range items {
			out = append(out, it...)
		}
		return out
	}
	name := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }
	section := func(id byte, body []byte) []byte { return append([]byte{id, byte(len(body))}, body...) }

	m := []byte("\x00asm\x01\x00\x00\x00")
	m = append(m, section(1, vec([]byte{0x60, 0, 0}))...)
	var imps [][]byte
	for _, im := range imports {
		imps = append(imps, append(append(name(im[0]), name(im[1])...), 0x00, 0x00))
	}
	if len(imps) > 0 {
		m = append(m, section(2, vec(imps...))...)
	}
	m = append(m, section(3, vec([]byte{0}))...)
	var exps [][]byte
	for _, e := range exports {
		exps = append(exps, append(name(e), 0x00, byte(len(imports))))
	}
	m = append(m, section(7, vec(exps...))...)
	return append(m, section(10, vec([]byte{2, 0, 0x0b}))...)
}

func TestBadModules(t *testing.T) {
	cases := []struct {
		name  string
		image []byte
		want  string
	}{
		{"not a module", []byte("#!/bin/sh\necho hi\n"), "invalid magic number"},
		{"truncated", []byte("\x00asm\x01\x00"), "invalid version header"},
		{"component", []byte("\x00asm\x0d\x00\x01\x00"), "WASI preview 2"},
		{"unknown host module", wasmModule([][2]string{{"env", "host_magic"}}, "_start"), "module[env] not instantiated"},
		{"unknown WASI function", wasmModule([][2]string{{"wasi_snapshot_preview1", "sock_magic"}}, "_start"), "sock_magic"},
		{"WASI preview 2 import", wasmModule([][2]string{{"wasi:cli/environment@0.2.0", "get-environment"}}, "_start"), "wasi:cli/environment@0.2.0"},
		{"no _start", wasmModule(nil, "main"), "no _start"},
		{"reactor", wasmModule(nil, "_initialize"), "reactor"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			im, err := Prepare(c.image, machine.Limits{}, testOptions)
			if err == nil {
				im.Close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q: want ErrBadImage mentioning %q", err, c.want)
			}
			t.Log(err)
		})
	}
	// The assembler itself is sound: the same module with _start is fine.
	im, err := Prepare(wasmModule(nil, "_start"), machine.Limits{}, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if res, _, _ := runOnce(t, im, nil); res.Outcome != machine.Served || res.ExitStatus != 0 {
		t.Fatalf("empty _start: %v", res.Err())
	}
}

func TestMemoryMinimumOverLimit(t *testing.T) {
	_, err := Prepare(exampleWasm(t, "go-hello"), machine.Limits{Memory: 256 << 10}, testOptions)
	if !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), "over the 256 KiB limit") {
		t.Fatalf("error %v", err)
	}
}
