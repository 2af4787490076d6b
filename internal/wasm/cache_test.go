package wasm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/machine"
)

// PruneCache removes the compiled code of the images not kept, and the
// old shared layout's, leaves the kept ones and what is not its own, and
// an image pruned away compiles again when it comes back.
func TestPruneCache(t *testing.T) {
	dir := t.TempDir()
	o := Options{CacheDir: dir}
	hello, exitcode := exampleWasm(t, "hello"), exampleWasm(t, "exitcode")
	for _, b := range [][]byte{hello, exitcode} {
		prepareBytes(t, b, machine.Limits{}, o)
	}
	helloDir := filepath.Join(dir, "sha256-"+strings.TrimPrefix(ImageDigest(hello), "sha256:"))
	exitDir := filepath.Join(dir, "sha256-"+strings.TrimPrefix(ImageDigest(exitcode), "sha256:"))
	legacy := filepath.Join(dir, "wazero-v1.11.0-amd64-linux")
	if err := os.MkdirAll(legacy, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(legacy, "entry"), make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	notOurs := filepath.Join(dir, "README")
	if err := os.WriteFile(notOurs, []byte("someone else's\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := diskUsage(exitDir) + 1000
	if diskUsage(helloDir) == 0 || want == 1000 {
		t.Fatalf("compiled code not where expected: hello %d bytes, exitcode %d bytes", diskUsage(helloDir), want-1000)
	}

	freed, err := PruneCache(dir, []string{ImageDigest(hello)})
	if err != nil {
		t.Fatal(err)
	}
	if freed != want {
		t.Errorf("freed %d bytes, want %d", freed, want)
	}
	for _, p := range []string{exitDir, legacy} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is still there (%v)", p, err)
		}
	}
	for _, p := range []string{helloDir, notOurs} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}

	// Both images prepare and serve again; exitcode's code is cached anew.
	for _, b := range [][]byte{hello, exitcode} {
		if res, _, _ := runOnce(t, prepareBytes(t, b, machine.Limits{}, o), nil); res.Outcome != machine.Served {
			t.Fatal(res.Err())
		}
	}
	if diskUsage(exitDir) == 0 {
		t.Error("exitcode's compiled code was not cached again after the prune")
	}
	if freed, err := PruneCache(dir, []string{ImageDigest(hello), ImageDigest(exitcode)}); err != nil || freed != 0 {
		t.Errorf("pruning with everything kept: %d bytes freed, %v", freed, err)
	}
	if _, err := PruneCache(dir, []string{"sha256:XYZ"}); err == nil {
		t.Error("a malformed digest was accepted")
	}
	if freed, err := PruneCache(filepath.Join(dir, "absent"), nil); err != nil || freed != 0 {
		t.Errorf("pruning a cache that does not exist: %d, %v", freed, err)
	}
}
