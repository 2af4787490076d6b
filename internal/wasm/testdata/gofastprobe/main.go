// Command gofastprobe is a pre-initialised (dustgo) app that shows what a
// request sees of the snapshot: a counter and a heap slice that each
// request bumps, the request's arguments and environment, and how many
// environment variables there were at start-up (in the snapshot).
package main

import (
	"fmt"
	"os"

	"github.com/dust-run/dust/dustgo"
)

func main() {}

var (
	counter  int
	heap     []int
	startEnv = len(os.Environ())
)

func init() {
	dustgo.Handle(func(w dustgo.ResponseWriter, r *dustgo.Request) {
		counter++
		heap = append(heap, counter)
		v, ok := os.LookupEnv("PROBE")
		fmt.Fprintf(w, "counter=%d heap=%d\nargs=%q\nPROBE=%q %v\nstart-env=%d env=%d\n", counter, len(heap), os.Args, v, ok, startEnv, len(os.Environ()))
		if r.Query == "exit3" {
			os.Exit(3)
		}
		if r.Query == "panic" {
			panic("asked to")
		}
	})
}
