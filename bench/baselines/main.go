// Command baselines serves the two HTTP baselines Dust is compared with in
// the same run: a plain Go net/http handler (no isolation at all) and Go's
// net/http/cgi running a static Linux build of the same hello program as a
// process per request (the classic CGI model).
package main

import (
	"flag"
	"io"
	"log"
	"net/http"
	"net/http/cgi"
)

func main() {
	plain := flag.String("plain", "127.0.0.1:9080", "plain net/http hello `address`")
	cgiAddr := flag.String("cgi", "127.0.0.1:9081", "net/http/cgi `address`")
	bin := flag.String("cgi-bin", "", "static hello `program` for the CGI baseline")
	flag.Parse()
	go func() {
		log.Fatal(http.ListenAndServe(*plain, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "Hello, world!\n")
		})))
	}()
	if *bin == "" {
		log.Fatal("-cgi-bin is required")
	}
	log.Fatal(http.ListenAndServe(*cgiAddr, &cgi.Handler{Path: *bin}))
}
