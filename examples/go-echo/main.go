// Command go-echo is examples/echo in Go: it answers exactly what the C
// echo answers, so one test table checks both. Build it for wasm with
//
//	GOOS=wasip1 GOARCH=wasm go build -o examples/go-echo/go-echo.wasm ./examples/go-echo
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	fmt.Fprint(out, "Content-Type: text/plain\r\n\r\n")
	for _, v := range [][2]string{{"method", "REQUEST_METHOD"}, {"path", "PATH_INFO"}, {"query", "QUERY_STRING"}, {"content_length", "CONTENT_LENGTH"}} {
		fmt.Fprintf(out, "%s=%s\n", v[0], os.Getenv(v[1]))
	}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "HTTP_") {
			fmt.Fprintf(out, "header %s\n", kv)
		}
	}
	fmt.Fprint(out, "body:\n")
	// Streamed in 64 KiB pieces, never buffered whole, like the C echo.
	if _, err := io.CopyBuffer(out, os.Stdin, make([]byte, 64<<10)); err != nil {
		os.Exit(1)
	}
	if err := out.Flush(); err != nil {
		os.Exit(1)
	}
}
