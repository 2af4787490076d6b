// Command gocgi is an unmodified Go net/http/cgi program, as one would
// write it for any CGI server, built as a static Linux binary for hvt:
//
//	CGO_ENABLED=0 GOOS=linux go build -o gocgi-go.elf ./examples/linux/gocgi
//	dust deploy gocgi gocgi-go.elf --memory 1536MiB
//
// It starts the Go runtime for every request (no snapshot: see
// examples/go-fast-hello for the dustgo version, which starts once per
// deploy). Routes: / greets (?name=), /echo returns the body, /json
// answers JSON, /missing is 404.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"os"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("name")
		if name == "" {
			name = "world"
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "Hello, %s!\n", name)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		io.Copy(w, r.Body)
	})
	mux.HandleFunc("/json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "path": r.URL.Path, "query": r.URL.Query(), "agent": r.UserAgent(),
		})
	})
	// net/http/cgi takes the URL from REQUEST_URI, which includes the
	// path the app is mounted at (SCRIPT_NAME): routes are below it.
	if err := cgi.Serve(http.StripPrefix(os.Getenv("SCRIPT_NAME"), mux)); err != nil {
		fmt.Fprintln(os.Stderr, "gocgi:", err)
		os.Exit(1)
	}
}
