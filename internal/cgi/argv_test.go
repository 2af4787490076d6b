package cgi

import (
	"net/http/httptest"
	"slices"
	"testing"
)

// Query items become arguments only for an app that opted in; fixed
// arguments come right after argv[0] either way.
func TestArgv(t *testing.T) {
	r := FromHTTP(httptest.NewRequest("GET", "/lua/x?-e&os.exit(1)&a%20b", nil), "/lua")
	fixed := []string{"/app/main.lua", "--strict"}
	for _, tc := range []struct {
		fixed []string
		query bool
		want  []string
	}{
		{nil, false, []string{"/lua/x"}},
		{fixed, false, []string{"/lua/x", "/app/main.lua", "--strict"}},
		{nil, true, []string{"/lua/x", "-e", "os.exit(1)", "a b"}},
		{fixed, true, []string{"/lua/x", "/app/main.lua", "--strict", "-e", "os.exit(1)", "a b"}},
	} {
		if got := r.Argv(tc.fixed, tc.query); !slices.Equal(got, tc.want) {
			t.Errorf("Argv(%q, %v) = %q, want %q", tc.fixed, tc.query, got, tc.want)
		}
	}
	if got := r.Argv(fixed, false); &got[1] == &fixed[0] {
		t.Error("Argv shares the fixed slice")
	}
}
