// Command server is an ordinary Go net/http server, unmodified for Dust:
// it listens on $PORT and serves a few routes. As a server app it is
// snapshotted when it first waits for a connection, and every request
// meets a copy of that state.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
	"time"
)

var (
	served int
	seen   = map[string]bool{}
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		served++
		key := fmt.Sprintf("%x", rand.Uint64())
		seen[key] = true
		left, err := os.ReadFile("/tmp/left")
		os.WriteFile("/tmp/left", []byte("canary"), 0o600)
		fmt.Fprintf(w, "served=%d seen=%d left=%q/%v rand=%s path=%s\n", served, len(seen), left, err != nil, key, r.URL.Path)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		n, _ := io.Copy(w, r.Body)
		log.Printf("echoed %d bytes", n)
	})
	mux.HandleFunc("/json", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]any
		json.NewDecoder(r.Body).Decode(&in)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"method": r.Method, "in": in, "agent": r.UserAgent()})
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		f := w.(http.Flusher)
		for i := range 5 {
			fmt.Fprintf(w, "chunk %d\n", i)
			f.Flush()
		}
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s=%s\n", r.URL.Query().Get("k"), os.Getenv(r.URL.Query().Get("k")))
	})
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) { panic("asked to") })
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) { time.Sleep(time.Hour) })
	addr := ":" + os.Getenv("PORT")
	log.Printf("listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}
