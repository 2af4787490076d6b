package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Secrets are per app, not per version: a rollback must not bring back a
// password that was rotated because it leaked. They live in the secrets
// bucket of dust.db (mode 0600, in a 0700 directory) and are never part of
// an App, so nothing that shows an App can show them.

// SecretChange sets and removes secrets of one app.
type SecretChange struct {
	Set   map[string]string // NAME -> value
	Unset []string          // names to remove; each must be set
}

// Empty reports whether c changes nothing.
func (c SecretChange) Empty() bool { return len(c.Set) == 0 && len(c.Unset) == 0 }

func (c SecretChange) validate() error {
	if len(c.Set) > maxEnvCount {
		return invalid("secret", "%d secrets, at most %d allowed", len(c.Set), maxEnvCount)
	}
	total := 0
	for k, v := range c.Set {
		if !validEnvKey(k) {
			return invalid("secret", "name %q must match [A-Za-z_][A-Za-z0-9_]*", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return invalid("secret", "value of %s contains a NUL byte", k)
		}
		total += len(k) + len(v) + 2
	}
	if total > maxEnvBytes {
		return invalid("secret", "more than %d bytes in total", maxEnvBytes)
	}
	for _, k := range c.Unset {
		if _, both := c.Set[k]; both {
			return invalid("secret", "%s is both set and removed", k)
		}
	}
	return nil
}

func readSecrets(tx *bolt.Tx, name string) (map[string]string, error) {
	m := map[string]string{}
	v := tx.Bucket(bucketSecrets).Get([]byte(name))
	if v == nil {
		return m, nil
	}
	if err := json.Unmarshal(v, &m); err != nil {
		// The error must not quote the record: it holds the values.
		return nil, fmt.Errorf("app %q: secrets record does not decode", name)
	}
	return m, nil
}

// changeSecrets applies c to app name's secrets. env is the environment of
// the version that will be current: a name may be an env variable or a
// secret, not both, so that which value the app gets is never a puzzle.
func changeSecrets(tx *bolt.Tx, name string, c SecretChange, env []string) error {
	m, err := readSecrets(tx, name)
	if err != nil {
		return err
	}
	for _, k := range c.Unset {
		if _, ok := m[k]; !ok {
			return invalid("secret", "app %s has no secret %s (it has: %s)", name, k, namesOrNone(m))
		}
		delete(m, k)
	}
	for k, v := range c.Set {
		m[k] = v
	}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := m[k]; ok {
			return fmt.Errorf("%s is both an env variable and a secret of app %s; remove one (--unset-env %s or dust secret rm %s %s): %w", k, name, k, name, k, ErrConflict)
		}
	}
	if len(m) > maxEnvCount {
		return invalid("secret", "%d secrets, at most %d allowed", len(m), maxEnvCount)
	}
	b := tx.Bucket(bucketSecrets)
	if len(m) == 0 {
		return b.Delete([]byte(name))
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return b.Put([]byte(name), raw)
}

func namesOrNone(m map[string]string) string {
	if len(m) == 0 {
		return "none"
	}
	return strings.Join(sortedNames(m), ", ")
}

func sortedNames(m map[string]string) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

// ChangeSecrets applies c to the secrets of existing app name and returns
// the names it has afterwards.
func (s *Store) ChangeSecrets(name string, c SecretChange) ([]string, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	var names []string
	err := s.db.Update(func(tx *bolt.Tx) error {
		rec, err := getApp(tx, name)
		if err != nil {
			return err
		}
		if err := changeSecrets(tx, name, c, rec.History[rec.currentIndex()].Settings.Env); err != nil {
			return err
		}
		m, err := readSecrets(tx, name)
		names = sortedNames(m)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("secrets of %s: %w", name, err)
	}
	return names, nil
}

// Secrets returns app name's secrets, values included: for handing to its
// machines, never for showing.
func (s *Store) Secrets(name string) (map[string]string, error) {
	var m map[string]string
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		m, err = readSecrets(tx, name)
		return err
	})
	return m, err
}

// SecretNames returns the names of app name's secrets, sorted.
func (s *Store) SecretNames(name string) ([]string, error) {
	m, err := s.Secrets(name)
	if err != nil {
		return nil, err
	}
	return sortedNames(m), nil
}
