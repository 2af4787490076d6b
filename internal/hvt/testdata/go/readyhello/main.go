// Command readyhello is the dustgo hello built for Linux: the smallest
// program that starts every request from its post-init snapshot.
package main

import "github.com/dust-run/dust/dustgo"

func main() {}

func init() {
	dustgo.Handle(func(w dustgo.ResponseWriter, r *dustgo.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("Hello from Go!\n"))
	})
}
