// Command go-fast-echo is examples/echo as a pre-initialised Dust app
// (package dustgo): the same answer, byte for byte, so one test table
// checks it with the others. Build it as a reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o examples/go-fast-echo/go-fast-echo.wasm ./examples/go-fast-echo
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/dust-run/dust/dustgo"
)

// main is never run in a reactor; the toolchain wants it all the same.
func main() {}

func init() {
	dustgo.Handle(echo)
}

func echo(w dustgo.ResponseWriter, r *dustgo.Request) {
	w.Header().Set("Content-Type", "text/plain")
	contentLength := ""
	if r.ContentLength >= 0 {
		contentLength = fmt.Sprint(r.ContentLength)
	}
	fmt.Fprintf(w, "method=%s\npath=%s\nquery=%s\ncontent_length=%s\n", r.Method, r.Path, r.Query, contentLength)
	// The gateway's order, which is what examples/echo prints.
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "HTTP_") {
			fmt.Fprintf(w, "header %s\n", kv)
		}
	}
	fmt.Fprint(w, "body:\n")
	// Streamed in 64 KiB pieces, never buffered whole.
	if _, err := io.CopyBuffer(w, r.Body, make([]byte, 64<<10)); err != nil {
		fmt.Fprintf(os.Stderr, "go-fast-echo: reading the body: %v\n", err)
	}
}
