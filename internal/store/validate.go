package store

import (
	"fmt"
	"strings"

	"github.com/dust-run/dust/internal/machine"
)

// Limits on free-form settings. They keep one app record, and the
// environment copied into every machine, small; they are far above
// anything a real app needs.
const (
	maxRouteLen = 1024
	maxHostLen  = 253
	maxEnvCount = 256
	maxEnvBytes = 64 << 10
	// MaxArgs and MaxArgBytes bound an app's fixed arguments; every
	// request's argv holds them, beside the environment, in the guest's
	// first stack pages.
	MaxArgs     = 256
	MaxArgBytes = 32 << 10
)

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}

// ValidateName checks an app name: [a-z0-9][a-z0-9-]{0,62}. Names end up
// in URLs, metric labels and log lines, hence the narrow alphabet.
func ValidateName(name string) error {
	if name == "" {
		return invalid("name", "empty")
	}
	if len(name) > 63 {
		return invalid("name", "%d bytes long, at most 63 allowed", len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0:
		default:
			return invalid("name", "%q: character %q at offset %d not allowed (want [a-z0-9][a-z0-9-]*)", name, c, i)
		}
	}
	return nil
}

// ValidateKind checks a machine kind.
func ValidateKind(kind string) error {
	if kind != KindHVT && kind != KindWasm {
		return invalid("kind", "%q (want %q or %q)", kind, KindHVT, KindWasm)
	}
	return nil
}

// Normalize returns s with the forms people naturally type turned into the
// canonical ones Validate requires: a lower-case host and isolation mode,
// and a route without a trailing slash. It deliberately does not resolve "." or ".." so that a
// route that tries them is refused rather than silently rewritten.
func (s Settings) Normalize() Settings {
	s.Host = strings.ToLower(s.Host)
	s.Isolation = strings.ToLower(strings.TrimSpace(s.Isolation))
	if s.Serve = strings.ToLower(strings.TrimSpace(s.Serve)); s.Serve == ServeCGI {
		s.Serve = ""
	}
	if len(s.Route) > 1 && strings.HasSuffix(s.Route, "/") && !strings.HasSuffix(s.Route, "//") {
		s.Route = s.Route[:len(s.Route)-1]
	}
	s.Env = append([]string(nil), s.Env...)
	s.Args = append([]string(nil), s.Args...) // none is nil, however it was said
	return s
}

// Validate checks s as it would be stored; the error names the offending
// field and wraps ErrInvalid.
func (s Settings) Validate() error {
	if err := validateRoute(s.Route); err != nil {
		return err
	}
	if err := validateHost(s.Host); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"memory", s.Memory},
		{"timeout", int64(s.Timeout)},
		{"max_concurrency", int64(s.MaxConcurrency)},
		{"queue_wait", int64(s.QueueWait)},
		{"max_body", s.MaxBody},
	} {
		if f.v < 0 {
			return invalid(f.name, "%d is negative", f.v)
		}
	}
	// 0 already means "default", so "no queue at all" needs its own value.
	if s.QueueLen < -1 {
		return invalid("queue_len", "%d (want >= 0, or -1 for no queue)", s.QueueLen)
	}
	if s.Serve != "" && s.Serve != ServeHTTP {
		return invalid("serve", "%q (want %q or %q)", s.Serve, ServeCGI, ServeHTTP)
	}
	if !machine.ValidIsolation(s.Isolation) {
		return invalid("isolation", "%q (want %q or %q)", s.Isolation, machine.IsolationRestore, machine.IsolationFresh)
	}
	if err := validateArgs(s.Args); err != nil {
		return err
	}
	if s.Files != "" {
		if err := ValidateDigest(s.Files); err != nil {
			return invalid("files", "%q is not a files layer digest (want sha256:<64 lower-case hex digits>)", s.Files)
		}
	}
	return validateEnv(s.Env)
}

func validateArgs(args []string) error {
	if len(args) > MaxArgs {
		return invalid("args", "%d arguments, at most %d allowed", len(args), MaxArgs)
	}
	total := 0
	for i, a := range args {
		if total += len(a) + 1; total > MaxArgBytes {
			return invalid("args", "more than %d bytes in total", MaxArgBytes)
		}
		// An argument reaches the guest as a C string.
		if strings.IndexByte(a, 0) >= 0 {
			return invalid(fmt.Sprintf("args[%d]", i), "%.40q contains a NUL byte", a)
		}
	}
	return nil
}

// IsolationMode is the isolation mode s asks for, the default resolved.
func (s Settings) IsolationMode() string {
	if s.Isolation == "" {
		return machine.IsolationRestore
	}
	return s.Isolation
}

func validateRoute(r string) error {
	switch {
	case r == "":
		return invalid("route", "empty (want a path prefix such as \"/\" or \"/hello\")")
	case len(r) > maxRouteLen:
		return invalid("route", "%d bytes long, at most %d allowed", len(r), maxRouteLen)
	case r[0] != '/':
		return invalid("route", "%q does not start with \"/\"", r)
	case r == "/":
		return nil
	}
	// A conservative alphabet: the gateway matches routes against decoded
	// request paths, so '%', '?', '#', '\\', spaces and control bytes could
	// only ever produce routes that never match, or match surprisingly.
	for i := 0; i < len(r); i++ {
		c := r[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("/-._~", c) >= 0:
		default:
			return invalid("route", "%q: character %q at offset %d not allowed (want letters, digits and -._~/)", r, c, i)
		}
	}
	if strings.HasSuffix(r, "/") {
		return invalid("route", "%q ends with \"/\"", r)
	}
	for _, seg := range strings.Split(r[1:], "/") {
		switch seg {
		case "":
			return invalid("route", "%q contains \"//\"", r)
		case ".", "..":
			return invalid("route", "%q contains a %q segment", r, seg)
		}
	}
	return nil
}

func validateHost(h string) error {
	if h == "" {
		return nil
	}
	if len(h) > maxHostLen {
		return invalid("host", "%d bytes long, at most %d allowed", len(h), maxHostLen)
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.':
		case c >= 'A' && c <= 'Z':
			return invalid("host", "%q is not lower-case", h)
		case c == ':':
			return invalid("host", "%q has a port or is an IPv6 literal (want a name without port)", h)
		default:
			return invalid("host", "%q: character %q at offset %d not allowed", h, c, i)
		}
	}
	for _, label := range strings.Split(h, ".") {
		switch {
		case label == "":
			return invalid("host", "%q has an empty label", h)
		case len(label) > 63:
			return invalid("host", "%q has a label longer than 63 bytes", h)
		case label[0] == '-' || label[len(label)-1] == '-':
			return invalid("host", "%q has a label starting or ending with \"-\"", h)
		}
	}
	return nil
}

func validateEnv(env []string) error {
	if len(env) > maxEnvCount {
		return invalid("env", "%d variables, at most %d allowed", len(env), maxEnvCount)
	}
	total := 0
	seen := make(map[string]int, len(env))
	for i, kv := range env {
		field := fmt.Sprintf("env[%d]", i)
		total += len(kv) + 1
		if total > maxEnvBytes {
			return invalid("env", "more than %d bytes in total", maxEnvBytes)
		}
		key, _, ok := strings.Cut(kv, "=")
		if !ok {
			return invalid(field, "%q is not KEY=VALUE", kv)
		}
		if !validEnvKey(key) {
			return invalid(field, "key %q must match [A-Za-z_][A-Za-z0-9_]*", key)
		}
		// The value reaches the guest as a C string.
		if strings.IndexByte(kv, 0) >= 0 {
			return invalid(field, "value of %s contains a NUL byte", key)
		}
		if j, dup := seen[key]; dup {
			return invalid(field, "%s already set by env[%d]", key, j)
		}
		seen[key] = i
	}
	return nil
}

func validEnvKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c == '_':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
