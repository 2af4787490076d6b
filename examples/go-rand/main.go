// Command go-rand is a pre-initialised Dust app (package dustgo) that
// prints what a snapshot could replay: a value from math/rand/v2's and
// from math/rand's top-level functions, the iteration order of a
// 16-entry map built in the request, and 8 bytes of crypto/rand. Every
// request must print a different line. Build it as a reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o examples/go-rand/go-rand.wasm ./examples/go-rand
package main

import (
	crand "crypto/rand"
	"fmt"
	"math/rand"
	randv2 "math/rand/v2"
	"strings"

	"github.com/dust-run/dust/dustgo"
)

// main is never run in a reactor; the toolchain wants it all the same.
func main() {}

func init() {
	dustgo.Handle(func(w dustgo.ResponseWriter, r *dustgo.Request) {
		m := make(map[int]bool, 16)
		for i := range 16 {
			m[i] = true
		}
		var order strings.Builder
		for k := range m {
			fmt.Fprintf(&order, "%d,", k)
		}
		var b [8]byte
		crand.Read(b[:])
		fmt.Fprintf(w, "mrand2=%d mrand=%d order=%s crypto=%x\n", randv2.Int64(), rand.Int63(), order.String(), b)
	})
}
