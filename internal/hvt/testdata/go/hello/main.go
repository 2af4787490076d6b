// hello is the smallest Go CGI program: one response through fmt.
package main

import "fmt"

func main() {
	fmt.Printf("Content-Type: text/plain\r\n\r\nHello from Go!\n")
}
