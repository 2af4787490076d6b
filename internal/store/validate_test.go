package store

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"hello", true},
		{"a", true},
		{"0", true},
		{"my-app-2", true},
		{"a-", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"-a", false},
		{"Hello", false},
		{"a_b", false},
		{"a.b", false},
		{"a/b", false},
		{"..", false},
		{"a b", false},
		{"é", false},
		{"a\x00", false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateName(%q) = %v, not ErrInvalid", tc.name, err)
		}
	}
}

func TestValidateKindAndDigest(t *testing.T) {
	for _, k := range []string{KindHVT, KindWasm} {
		if err := ValidateKind(k); err != nil {
			t.Errorf("ValidateKind(%q) = %v", k, err)
		}
	}
	for _, k := range []string{"", "HVT", "wasm ", "docker"} {
		if err := ValidateKind(k); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateKind(%q) = %v, want ErrInvalid", k, err)
		}
	}
	good := "sha256:" + strings.Repeat("0123456789abcdef", 4)
	if err := ValidateDigest(good); err != nil {
		t.Errorf("ValidateDigest(%q) = %v", good, err)
	}
	for _, d := range badDigests {
		if err := ValidateDigest(d); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateDigest(%q) = %v, want ErrInvalid", d, err)
		}
	}
}

// badDigests are names a client might try in order to reach other files.
var badDigests = []string{
	"",
	"sha256:",
	"sha256:zz",
	"../x",
	"sha256:../../dust.db",
	"sha256:" + strings.Repeat("A", 64),
	"sha256:" + strings.Repeat("a", 63),
	"sha256:" + strings.Repeat("a", 65),
	"sha256:" + strings.Repeat("a", 62) + "/.",
	"sha512:" + strings.Repeat("a", 64),
	strings.Repeat("a", 64),
	"sha256:" + strings.Repeat("a", 63) + "\x00",
	"/etc/passwd",
}

func TestSettingsValidate(t *testing.T) {
	base := Settings{Route: "/"}
	with := func(f func(*Settings)) Settings {
		s := base
		f(&s)
		return s
	}
	for _, tc := range []struct {
		desc  string
		set   Settings
		field string // "" = valid; otherwise the field the error must name
	}{
		{"root", base, ""},
		{"prefix", with(func(s *Settings) { s.Route = "/hello" }), ""},
		{"nested", with(func(s *Settings) { s.Route = "/api/v1.2/x_y-z~" }), ""},
		{"dots inside a segment", with(func(s *Settings) { s.Route = "/a..b/...x" }), ""},
		{"empty route", with(func(s *Settings) { s.Route = "" }), "route"},
		{"relative", with(func(s *Settings) { s.Route = "hello" }), "route"},
		{"trailing slash", with(func(s *Settings) { s.Route = "/hello/" }), "route"},
		{"double slash", with(func(s *Settings) { s.Route = "//hello" }), "route"},
		{"inner double slash", with(func(s *Settings) { s.Route = "/a//b" }), "route"},
		{"dotdot", with(func(s *Settings) { s.Route = "/.." }), "route"},
		{"dotdot inside", with(func(s *Settings) { s.Route = "/a/../b" }), "route"},
		{"dot", with(func(s *Settings) { s.Route = "/a/./b" }), "route"},
		{"encoded dotdot", with(func(s *Settings) { s.Route = "/%2e%2e/x" }), "route"},
		{"backslash", with(func(s *Settings) { s.Route = "/a\\..\\b" }), "route"},
		{"query", with(func(s *Settings) { s.Route = "/a?b" }), "route"},
		{"fragment", with(func(s *Settings) { s.Route = "/a#b" }), "route"},
		{"space", with(func(s *Settings) { s.Route = "/a b" }), "route"},
		{"NUL", with(func(s *Settings) { s.Route = "/a\x00" }), "route"},
		{"newline", with(func(s *Settings) { s.Route = "/a\n" }), "route"},
		{"non-ASCII", with(func(s *Settings) { s.Route = "/café" }), "route"},
		{"too long", with(func(s *Settings) { s.Route = "/" + strings.Repeat("a", maxRouteLen) }), "route"},
		{"host", with(func(s *Settings) { s.Host = "example.com" }), ""},
		{"host IPv4", with(func(s *Settings) { s.Host = "127.0.0.1" }), ""},
		{"host upper", with(func(s *Settings) { s.Host = "Example.com" }), "host"},
		{"host port", with(func(s *Settings) { s.Host = "example.com:8080" }), "host"},
		{"host IPv6", with(func(s *Settings) { s.Host = "[::1]" }), "host"},
		{"host empty label", with(func(s *Settings) { s.Host = "a..b" }), "host"},
		{"host trailing dot", with(func(s *Settings) { s.Host = "a.b." }), "host"},
		{"host dash", with(func(s *Settings) { s.Host = "-a.b" }), "host"},
		{"host underscore", with(func(s *Settings) { s.Host = "a_b.c" }), "host"},
		{"host slash", with(func(s *Settings) { s.Host = "a/b" }), "host"},
		{"host long label", with(func(s *Settings) { s.Host = strings.Repeat("a", 64) + ".com" }), "host"},
		{"limits", with(func(s *Settings) {
			s.Memory, s.Timeout, s.MaxConcurrency, s.QueueLen, s.QueueWait, s.MaxBody = 32<<20, time.Second, 4, 10, time.Second, 1<<20
		}), ""},
		{"no queue", with(func(s *Settings) { s.QueueLen = -1 }), ""},
		{"negative memory", with(func(s *Settings) { s.Memory = -1 }), "memory"},
		{"negative timeout", with(func(s *Settings) { s.Timeout = -time.Second }), "timeout"},
		{"negative concurrency", with(func(s *Settings) { s.MaxConcurrency = -1 }), "max_concurrency"},
		{"negative queue", with(func(s *Settings) { s.QueueLen = -2 }), "queue_len"},
		{"negative queue wait", with(func(s *Settings) { s.QueueWait = -1 }), "queue_wait"},
		{"negative body", with(func(s *Settings) { s.MaxBody = -1 }), "max_body"},
		{"env", with(func(s *Settings) { s.Env = []string{"A=1", "_b=", "C_2=x=y", "D= spaces ok "} }), ""},
		{"env no equals", with(func(s *Settings) { s.Env = []string{"A=1", "B"} }), "env[1]"},
		{"env empty key", with(func(s *Settings) { s.Env = []string{"=1"} }), "env[0]"},
		{"env digit first", with(func(s *Settings) { s.Env = []string{"1A=1"} }), "env[0]"},
		{"env dash", with(func(s *Settings) { s.Env = []string{"A-B=1"} }), "env[0]"},
		{"env NUL in value", with(func(s *Settings) { s.Env = []string{"A=x\x00y"} }), "env[0]"},
		{"env NUL in key", with(func(s *Settings) { s.Env = []string{"A\x00=y"} }), "env[0]"},
		{"env duplicate", with(func(s *Settings) { s.Env = []string{"A=1", "B=2", "A=3"} }), "env[2]"},
		{"env too many", with(func(s *Settings) {
			for i := range maxEnvCount + 1 {
				s.Env = append(s.Env, "K"+strings.Repeat("_", i)+"=v")
			}
		}), "env"},
		{"env too big", with(func(s *Settings) { s.Env = []string{"A=" + strings.Repeat("x", maxEnvBytes)} }), "env"},
		{"isolation restore", with(func(s *Settings) { s.Isolation = "restore" }), ""},
		{"isolation fresh", with(func(s *Settings) { s.Isolation = "fresh" }), ""},
		{"isolation unknown", with(func(s *Settings) { s.Isolation = "snapshot" }), "isolation"},
		{"isolation not normalized", with(func(s *Settings) { s.Isolation = "Fresh" }), "isolation"},
	} {
		err := tc.set.Validate()
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: Validate() = %v, want nil", tc.desc, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate() = %v, want ErrInvalid", tc.desc, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: error %q does not name field %q", tc.desc, err, tc.field)
		}
	}
}

func TestNormalize(t *testing.T) {
	env := []string{"A=1"}
	in := Settings{Route: "/hello/", Host: "Example.COM", Env: env}
	got := in.Normalize()
	if got.Route != "/hello" || got.Host != "example.com" {
		t.Errorf("Normalize() = route %q host %q, want /hello example.com", got.Route, got.Host)
	}
	got.Env[0] = "B=2"
	if env[0] != "A=1" {
		t.Error("Normalize shares Env with its input; a caller's later change would reach the store's copy")
	}
	// Traversal must stay visible to Validate rather than be cleaned away.
	for _, r := range []string{"/a/../b/", "/../", "/./", "//"} {
		if err := (Settings{Route: r}).Normalize().Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("route %q: normalized and validated to %v, want ErrInvalid", r, err)
		}
	}
	if r := (Settings{Route: "/"}).Normalize().Route; r != "/" {
		t.Errorf("Normalize turned route \"/\" into %q", r)
	}
	if got := (Settings{Isolation: " Fresh "}).Normalize().Isolation; got != "fresh" {
		t.Errorf("Normalize turned isolation \" Fresh \" into %q, want fresh", got)
	}
	// "" stays "": an app that never chose follows the default.
	if got := (Settings{}).Normalize(); got.Isolation != "" || got.IsolationMode() != "restore" {
		t.Errorf("default isolation: stored %q, mode %q; want \"\" and restore", got.Isolation, got.IsolationMode())
	}
}
