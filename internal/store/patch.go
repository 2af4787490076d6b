package store

import (
	"slices"
	"strings"
	"time"
)

// Patch is what one deploy says about an app's settings. A nil field was
// not given and is inherited from the current version; a field given as
// zero asks for the gateway's default. Without this distinction a redeploy
// that only changes the image would silently drop the route and limits.
type Patch struct {
	Route, Host        *string
	Memory, MaxBody    *int64
	Timeout, QueueWait *time.Duration
	MaxConcurrency     *int
	QueueLen           *int
	PassAuthorization  *bool
	Isolation          *string
	// SetEnv entries (KEY=VALUE) replace KEY in the inherited environment
	// or are appended; UnsetEnv keys are removed (each must be set).
	// Merging, not replacing, is what makes `--env A=1` on a redeploy
	// safe for an app that also has B.
	SetEnv   []string
	UnsetEnv []string
	// Args replaces the fixed arguments whole (a non-nil empty slice
	// removes them): an argument list is an order, not a set to merge.
	Args      *[]string
	QueryArgs *bool
	// Files is the digest of a stored files layer; "" removes the app's.
	Files *string
	Serve *string
}

// Apply returns base with p applied.
func (p Patch) Apply(base Settings) (Settings, error) {
	s := base
	s.Env = slices.Clone(base.Env)
	if p.Route != nil {
		s.Route = *p.Route
	}
	if p.Host != nil {
		s.Host = *p.Host
	}
	if p.Memory != nil {
		s.Memory = *p.Memory
	}
	if p.MaxBody != nil {
		s.MaxBody = *p.MaxBody
	}
	if p.Timeout != nil {
		s.Timeout = *p.Timeout
	}
	if p.QueueWait != nil {
		s.QueueWait = *p.QueueWait
	}
	if p.MaxConcurrency != nil {
		s.MaxConcurrency = *p.MaxConcurrency
	}
	if p.QueueLen != nil {
		s.QueueLen = *p.QueueLen
	}
	if p.PassAuthorization != nil {
		s.PassAuthorization = *p.PassAuthorization
	}
	if p.Isolation != nil {
		s.Isolation = *p.Isolation
	}
	if p.Args != nil {
		s.Args = slices.Clone(*p.Args)
	} else {
		s.Args = slices.Clone(base.Args)
	}
	if p.QueryArgs != nil {
		s.QueryArgs = *p.QueryArgs
	}
	if p.Files != nil {
		s.Files = *p.Files
	}
	if p.Serve != nil {
		s.Serve = *p.Serve
	}
	index := func(key string) int {
		return slices.IndexFunc(s.Env, func(kv string) bool { k, _, _ := strings.Cut(kv, "="); return k == key })
	}
	for _, key := range p.UnsetEnv {
		i := index(key)
		if i < 0 {
			return s, invalid("unset_env", "%s is not set (env has: %s)", key, envKeys(s.Env))
		}
		s.Env = slices.Delete(s.Env, i, i+1)
	}
	for _, kv := range p.SetEnv {
		key, _, ok := strings.Cut(kv, "=")
		if !ok {
			return s, invalid("env", "%q is not KEY=VALUE", kv)
		}
		if slices.Contains(p.UnsetEnv, key) {
			return s, invalid("env", "%s is both set and unset", key)
		}
		if i := index(key); i >= 0 {
			s.Env[i] = kv
		} else {
			s.Env = append(s.Env, kv)
		}
	}
	return s, nil
}

func envKeys(env []string) string {
	if len(env) == 0 {
		return "nothing"
	}
	keys := make([]string, len(env))
	for i, kv := range env {
		keys[i], _, _ = strings.Cut(kv, "=")
	}
	return strings.Join(keys, ", ")
}

// Equal reports whether s and o are the same settings (after Normalize).
// A field added to Settings must be added here, or a redeploy changing
// only it would be taken for a no-op.
func (s Settings) Equal(o Settings) bool {
	return s.Route == o.Route && s.Host == o.Host && s.Memory == o.Memory && s.Timeout == o.Timeout &&
		s.MaxConcurrency == o.MaxConcurrency && s.QueueLen == o.QueueLen && s.QueueWait == o.QueueWait &&
		s.MaxBody == o.MaxBody && s.PassAuthorization == o.PassAuthorization && s.Isolation == o.Isolation &&
		slices.Equal(s.Env, o.Env) && slices.Equal(s.Args, o.Args) && s.QueryArgs == o.QueryArgs && s.Files == o.Files &&
		s.Serve == o.Serve
}
