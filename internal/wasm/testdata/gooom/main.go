// Command gooom keeps allocating until the Go runtime runs out of memory.
package main

import "fmt"

var keep [][]byte

func main() {
	fmt.Print("Content-Type: text/plain\r\n\r\n")
	for {
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = 1
		}
		keep = append(keep, b)
	}
}
