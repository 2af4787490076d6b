// Command readyhttp is an http.Handler served through package dusthttp,
// built for Linux: snapshotted at its ready point like any dustgo app.
package main

import (
	"fmt"
	"io"
	"net/http"

	"github.com/dust-run/dust/dustgo/dusthttp"
)

func main() {}

func init() {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /upper", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Len", fmt.Sprint(len(b)))
		fmt.Fprintf(w, "%s %s\n", r.Method, b)
	})
	mux.HandleFunc("/teapot", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})
	dusthttp.Handle(mux)
}
