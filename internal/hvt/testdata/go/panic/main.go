// panic answers, or panics when the query asks it to: an explicit panic
// (exit status 2 through the runtime's own path) or a nil dereference
// (a hardware fault the runtime would turn into a panic through SIGSEGV).
package main

import (
	"fmt"
	"os"
)

type node struct{ next *node }

func main() {
	switch os.Getenv("QUERY_STRING") {
	case "panic":
		panic("asked to panic")
	case "nil":
		var n *node
		fmt.Println(n.next.next)
	}
	fmt.Printf("Content-Type: text/plain\r\n\r\nno panic\n")
}
