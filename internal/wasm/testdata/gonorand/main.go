// Command gonorand is a Go reactor that serves requests without dustgo,
// and so without saying where the Go runtime keeps its random state: Dust
// must refuse to snapshot it rather than replay that state.
package main

import "fmt"

func main() {}

//go:wasmexport dust_serve
func serve() int32 {
	fmt.Print("Content-Type: text/plain\r\n\r\nreplayed\n")
	return 0
}
