// Command goserver is an ordinary Go net/http server, written as for any
// host: it listens on $PORT (8080 if unset) and serves a few routes. On
// Dust it runs unmodified as a server app: started once per deploy,
// snapshotted when it first waits for a connection, and every request
// meets a brand-new copy of that state.
//
//	CGO_ENABLED=0 GOOS=linux go build -o goserver-go.elf ./examples/linux/goserver
//	dust deploy goserver goserver-go.elf --serve http --memory 1536MiB
//
// Routes: GET / greets (?name=), POST /echo returns the body, POST /json
// answers the JSON it was sent with what it saw, GET /stream writes five
// lines one by one, GET /headers lists the request headers, GET /count
// shows that no request sees another's state (always 1).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"time"
)

var served int

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("name")
		if name == "" {
			name = "world"
		}
		fmt.Fprintf(w, "Hello, %s!\n", name)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		if ct := r.Header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		io.Copy(w, r.Body)
	})
	mux.HandleFunc("POST /json", func(w http.ResponseWriter, r *http.Request) {
		var in any
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"you_sent": in, "method": r.Method, "path": r.URL.Path})
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		for i := range 5 {
			fmt.Fprintf(w, "line %d at %s\n", i, time.Now().Format(time.RFC3339Nano))
			w.(http.Flusher).Flush()
			time.Sleep(10 * time.Millisecond)
		}
	})
	mux.HandleFunc("GET /headers", func(w http.ResponseWriter, r *http.Request) {
		names := make([]string, 0, len(r.Header))
		for k := range r.Header {
			names = append(names, k)
		}
		sort.Strings(names)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"host": r.Host, "remote": r.RemoteAddr, "names": names, "forwarded_for": r.Header.Get("X-Forwarded-For")})
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		served++
		fmt.Fprintf(w, "%d\n", served)
	})
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	log.Printf("goserver listening on :%s", port)
	log.Fatal(http.ListenAndServe(":"+port, mux))
}
