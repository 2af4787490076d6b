// Command go-fast-hello is examples/go-hello as a pre-initialised Dust app
// (package dustgo): the Go runtime starts once per deploy, not once per
// request. Build it as a reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o examples/go-fast-hello/go-fast-hello.wasm ./examples/go-fast-hello
package main

import "github.com/dust-run/dust/dustgo"

// main is never run in a reactor; the toolchain wants it all the same.
func main() {}

func init() {
	dustgo.Handle(func(w dustgo.ResponseWriter, r *dustgo.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("Hello, world!\n"))
	})
}
