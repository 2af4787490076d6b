package hvt

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
)

// A restored machine serves the same request again with the same answer,
// and in its second life the restore really ran on the same VM.
func TestRestoreServesAgain(t *testing.T) {
	for _, name := range []string{"hello", "echo"} {
		im := prepare(t, name, machine.Limits{})
		mm, err := im.newMachine()
		if err != nil {
			t.Fatal(err)
		}
		defer mm.Close()
		req, _ := machinetest.EchoRequest()
		if name == "hello" {
			req = nil
		}
		var first []byte
		for i := range 20 {
			if req != nil {
				req, _ = machinetest.EchoRequest()
			}
			var out, log bytes.Buffer
			res := mm.Run(context.Background(), orEmpty(req), &out, &log)
			if err := res.Err(); err != nil {
				t.Fatalf("%s run %d: %v", name, i, err)
			}
			if i == 0 {
				first = bytes.Clone(out.Bytes())
			} else if !bytes.Equal(out.Bytes(), first) && name == "hello" {
				t.Fatalf("%s run %d answered %q, first run %q", name, i, out.Bytes(), first)
			}
			t0 := time.Now()
			if err := mm.Reset(); err != nil {
				t.Fatalf("reset %d: %v", i, err)
			}
			cmp, cp := mm.LastRestore()
			if i == 19 {
				t.Logf("%s: reset %v, %d pages compared, %d copied back", name, time.Since(t0), cmp, cp)
			}
		}
		if mm.Reused() != 20 {
			t.Fatalf("Reused %d, want 20", mm.Reused())
		}
	}
}

func orEmpty(r *machine.Request) *machine.Request {
	if r == nil {
		return &machine.Request{}
	}
	return r
}
