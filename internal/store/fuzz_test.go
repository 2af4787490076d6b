package store

import (
	"errors"
	"strings"
	"testing"
)

// FuzzValidate feeds arbitrary names and settings to the validators. They
// must never panic, must fail only with ErrInvalid, and whatever they
// accept must be safe to use as a route prefix and an app name.
func FuzzValidate(f *testing.F) {
	for _, seed := range []struct {
		name, route, host, env string
		queue                  int
	}{
		{"hello", "/hello", "", "A=1", 0},
		{"a-1", "/", "example.com", "", -1},
		{"-x", "/a/../b", "EXAMPLE.com:80", "1=2", -2},
		{"", "//", "[::1]", "A\x00=1", 5},
		{"x", "/./", "a..b", "A=1\nA=2", 0},
		{"Z", "/hello/", "-a.b", "=", 0},
		{"ab", "/%2e%2e", "a_b", "K=V=W", 0},
		{"a", "/a\\..\\b", "", "K", 0},
		{"a", "/é", "é.com", "_=\x00", 0},
		{"a", "/...", "1.2.3.4", "a_B9=", 0},
		{"a", "", "", "", 0},
		{"a", "a/b", "", "", 0},
	} {
		f.Add(seed.name, seed.route, seed.host, seed.env, seed.queue)
	}
	f.Fuzz(func(t *testing.T, name, route, host, env string, queue int) {
		if err := ValidateName(name); err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ValidateName(%q) = %v, not ErrInvalid", name, err)
			}
		} else if !validNameSlow(name) {
			t.Fatalf("ValidateName accepted %q", name)
		}

		set := Settings{Route: route, Host: host, QueueLen: queue}
		if env != "" {
			set.Env = strings.Split(env, "\n")
		}
		for _, s := range []Settings{set, set.Normalize()} {
			err := s.Validate()
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Validate(%+v) = %v, not ErrInvalid", s, err)
				}
				continue
			}
			r := s.Route
			if !strings.HasPrefix(r, "/") || strings.Contains(r, "//") || strings.ContainsAny(r, "\\%?#\x00") {
				t.Fatalf("accepted route %q", r)
			}
			for _, seg := range strings.Split(r, "/") {
				if seg == ".." || seg == "." {
					t.Fatalf("accepted route %q with a %q segment", r, seg)
				}
			}
			if r != "/" && strings.HasSuffix(r, "/") {
				t.Fatalf("accepted route %q with a trailing slash", r)
			}
			if strings.ContainsAny(s.Host, ":/ ") || s.Host != strings.ToLower(s.Host) {
				t.Fatalf("accepted host %q", s.Host)
			}
			for _, kv := range s.Env {
				k, _, ok := strings.Cut(kv, "=")
				if !ok || k == "" || strings.ContainsRune(kv, 0) {
					t.Fatalf("accepted env %q", kv)
				}
			}
		}
		// Normalizing must never turn a refused route into an accepted one
		// by resolving its dots away.
		if set.Normalize().Validate() == nil && strings.Contains(route, "..") {
			for _, seg := range strings.Split(route, "/") {
				if seg == ".." {
					t.Fatalf("route %q accepted after Normalize", route)
				}
			}
		}
	})
}

// validNameSlow restates the name rule independently of ValidateName.
func validNameSlow(s string) bool {
	if len(s) < 1 || len(s) > 63 || s[0] == '-' {
		return false
	}
	return strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}
