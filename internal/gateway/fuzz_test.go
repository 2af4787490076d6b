package gateway

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzSettingsFromQuery feeds arbitrary admin deploy query strings: parsing
// never panics, and whatever is accepted passes the store's validation
// with a route that starts with "/" and has no ".." segment.
func FuzzSettingsFromQuery(f *testing.F) {
	for _, s := range []string{
		"route=/hello&timeout=2s&memory=16777216",
		"route=/a/../b",
		"route=/x&env=A=1&env=B=2&max_concurrency=-5",
		"route=&host=Example.COM:80&queue_wait=1h&pass_authorization=maybe",
		"timeout=9999999999999999999h&max_body=-1",
		"route=/%00&env=%00=x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		set, err := settingsFromQuery("app", q)
		if err != nil {
			return
		}
		if err := set.Validate(); err != nil {
			t.Fatalf("accepted settings do not validate: %v", err)
		}
		if !strings.HasPrefix(set.Route, "/") {
			t.Fatalf("route %q does not start with /", set.Route)
		}
		for _, seg := range strings.Split(set.Route, "/") {
			if seg == ".." {
				t.Fatalf("route %q has a .. segment", set.Route)
			}
		}
	})
}
