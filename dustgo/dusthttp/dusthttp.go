// Package dusthttp serves an http.Handler as a pre-initialised Dust app (see
// package dustgo for how the app is built and what the snapshot means):
//
//	func init() { dusthttp.Handle(mux) }
//
// The request is the standard library's CGI request (net/http/cgi): the
// method, URL, headers and body are the client's, Host and RemoteAddr come
// from the gateway's meta-variables. net/http compiles for wasip1 without
// its networking, but it makes the module about twice the size of a
// dustgo one, which costs compile time at deploy and some per request
// (a bigger snapshot to copy): prefer dustgo.Handle for the smallest apps.
package dusthttp

import (
	"fmt"
	"net/http"
	"net/http/cgi"
	"os"

	"github.com/dust-run/dust/dustgo"
)

// Handle makes h the app's handler. Call it once, from an init function.
func Handle(h http.Handler) {
	dustgo.HandleCGI(func() int {
		if err := cgi.Serve(h); err != nil {
			fmt.Fprintf(os.Stderr, "dusthttp: %v\n", err)
			return 1
		}
		return 0
	})
}
