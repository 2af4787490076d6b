package wasm

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// An app's files given as an fs.FS (what the gateway gives: a store.Layer)
// are a read-only preopen at /app, through machine.Prepare like every
// kind's.
func TestFilesPreopen(t *testing.T) {
	img := luaWasm(t)
	k := Kind{Options: testOptions}
	pi, err := machine.Prepare(k, img, machine.Limits{Timeout: 10 * time.Second}, os.DirFS("testdata/luaapp"))
	if err != nil {
		t.Fatal(err)
	}
	defer pi.Close()
	im := pi.(*Image)
	res, out, log := runOnce(t, im, &machine.Request{Args: luaArgs, Env: []string{"REQUEST_METHOD=GET", "QUERY_STRING=files"}})
	if _, body := splitCGI(t, out); res.Outcome != machine.Served || body != "lua says: FILES via GET\n" {
		t.Fatalf("outcome %v, body %q, log %q", res.Outcome, body, log)
	}
	res, out, _ = runOnce(t, im, &machine.Request{Args: []string{"lua", "-e",
		`local f, err = io.open("/app/new.lua", "w") io.write("Content-Type: text/plain\r\n\r\n", tostring(f), " ", tostring(err))`}})
	if _, body := splitCGI(t, out); res.Outcome != machine.Served || !strings.HasPrefix(body, "nil ") {
		t.Errorf("writing into /app: %v %q", res.Outcome, body)
	}
}
