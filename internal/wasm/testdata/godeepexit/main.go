// Command godeepexit answers, then ends through os.Exit(0) 200 calls down
// when QUERY_STRING is "exit", else by returning from main.
package main

import (
	"fmt"
	"os"
)

//go:noinline
func descend(n int, exit bool) int {
	if n == 0 {
		if exit {
			os.Exit(0)
		}
		return 0
	}
	return descend(n-1, exit) + n
}

func main() {
	fmt.Print("Content-Type: text/plain\r\n\r\ndeep\n")
	if descend(200, os.Getenv("QUERY_STRING") == "exit") != 200*201/2 {
		os.Exit(1)
	}
}
