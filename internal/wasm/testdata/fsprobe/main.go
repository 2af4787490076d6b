// Command fsprobe reports what the guest can do with files, one line per
// attempt, for the wasm kind's capability tests.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Print("Content-Type: text/plain\r\n\r\n")
	if b, err := os.ReadFile("/data/hello.txt"); err != nil {
		fmt.Println("read: denied")
	} else {
		fmt.Printf("read: %s\n", b)
	}
	if err := os.WriteFile("/data/new.txt", []byte("x"), 0o644); err != nil {
		fmt.Println("write: denied")
	} else {
		fmt.Println("write: allowed")
	}
	if _, err := os.ReadFile("/etc/passwd"); err != nil {
		fmt.Println("host: denied")
	} else {
		fmt.Println("host: allowed")
	}
}
