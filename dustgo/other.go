//go:build !wasip1 && !(linux && amd64)

package dustgo

import "os"

func afterHandle() {}

var autoServe = false

// Outside wasip1 there is no snapshot: the process's own environment and
// arguments are the request's, as for any CGI program.

func environ() ([]string, error) { return os.Environ(), nil }

func args() ([]string, error) { return os.Args, nil }
