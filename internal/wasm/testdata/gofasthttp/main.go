// Command gofasthttp is an http.Handler served as a pre-initialised Dust
// app (package dusthttp).
package main

import (
	"fmt"
	"net/http"

	"github.com/dust-run/dust/dustgo/dusthttp"
)

func main() {}

func init() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hi/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "hi %s, q=%s ua=%s\n", r.PathValue("name"), r.URL.Query().Get("q"), r.UserAgent())
	})
	dusthttp.Handle(mux)
}
