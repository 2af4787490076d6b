// Command ready is a dustgo app built for Linux: its start-up runs once
// per deploy (up to dustgo.Handle's ready point) and every request resumes
// a copy of that state. It reports what a request must find fresh (random
// values, drawn on this thread and on others) and what it must not find
// (what an earlier request left in globals and in /tmp).
package main

import (
	crand "crypto/rand"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"

	"github.com/dust-run/dust/dustgo"
)

var (
	// Made in init, so part of the snapshot: the same in every request.
	atInit = rand.Uint64()
	// What a request changes; the next request must not see it.
	served int
	seen   = map[string]bool{}
)

func main() {}

func init() {
	dustgo.Handle(func(w dustgo.ResponseWriter, r *dustgo.Request) {
		served++
		body, _ := io.ReadAll(r.Body)
		key := fmt.Sprintf("%x", rand.Uint64())
		seen[key] = true
		left, err := os.ReadFile("/tmp/left")
		os.WriteFile("/tmp/left", []byte("canary"), 0o600)
		var cr [8]byte
		crand.Read(cr[:])
		// A goroutine that keeps its own thread: it runs on another M
		// than the handler (locked to the main thread through init).
		other := make(chan uint64)
		go func() {
			runtime.LockOSThread()
			other <- rand.Uint64()
		}()
		var m map[int]int = map[int]int{}
		for i := range 8 {
			m[i] = i
		}
		order := ""
		for k := range m {
			order += fmt.Sprint(k)
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "served=%d seen=%d left=%q/%v init=%x rand=%s other=%x crypto=%x order=%s\n",
			served, len(seen), left, err != nil, atInit, key, <-other, cr, order)
		fmt.Fprintf(w, "args=%q method=%s query=%s body=%q env=%s\n", os.Args, r.Method, r.Query, body, os.Getenv("DUST_TEST"))
		if strings.Contains(r.Query, "panic") {
			panic("asked to")
		}
	})
}
