// Command go-hello is examples/hello in Go, for the wasm machine kind:
//
//	GOOS=wasip1 GOARCH=wasm go build -o examples/go-hello/go-hello.wasm ./examples/go-hello
//
// It is an ordinary CGI program: headers, a blank line, the body.
package main

import "os"

func main() {
	os.Stdout.WriteString("Content-Type: text/plain\r\n\r\nHello, world!\n")
}
