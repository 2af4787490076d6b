// cgi is an unmodified net/http/cgi handler: query, headers, body and
// status codes.
package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"strings"
)

func main() {
	err := cgi.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/missing":
			http.Error(w, "nothing here", http.StatusNotFound)
			return
		case "/teapot":
			w.WriteHeader(http.StatusTeapot)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "name=%s agent=%s body=%s len=%d upper=%s\n",
			r.URL.Query().Get("name"), r.Header.Get("User-Agent"), body, len(body), strings.ToUpper(string(body)))
	}))
	if err != nil {
		fmt.Println("Status: 500\r\n\r\n" + err.Error())
	}
}
