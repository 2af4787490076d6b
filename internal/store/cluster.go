package store

import (
	"encoding/json"
	"fmt"
	"maps"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// In cluster mode (internal/cluster) the shared state numbers versions and
// holds secrets; each node's store is its materialised view of that state.
// Replace and SecretChange.ApplyTo are what the replication needs: the
// ordinary Deploy numbers versions itself, which would make two nodes
// disagree on what "v3" is.

// Replace makes app name's record exactly app, its history with the
// numbers given, and its secrets exactly secrets, in one transaction. The
// current version's image must be stored already. The name's version
// counter never goes back, so a later local Deploy still numbers after
// every version seen. Routes are not checked against other apps: the
// shared state, not this view, decides what is deployed.
func (s *Store) Replace(app App, secrets map[string]string) error {
	if err := ValidateName(app.Name); err != nil {
		return err
	}
	if len(app.History) == 0 || len(app.History) > HistoryLimit {
		return invalid("history", "app %s: %d versions (want 1 to %d)", app.Name, len(app.History), HistoryLimit)
	}
	rec := appRecord{Name: app.Name, Current: app.Current.Number}
	seen := map[int]bool{}
	for _, v := range app.History {
		if v.Number < 1 || seen[v.Number] {
			return invalid("history", "app %s: version number %d is not positive or repeats", app.Name, v.Number)
		}
		seen[v.Number] = true
		if err := ValidateKind(v.Kind); err != nil {
			return err
		}
		if err := ValidateDigest(v.Digest); err != nil {
			return err
		}
		set := v.Settings.Normalize()
		if err := set.Validate(); err != nil {
			return fmt.Errorf("app %s v%d: %w", app.Name, v.Number, err)
		}
		v.Settings = set
		rec.History = append(rec.History, toVersionRecord(v))
	}
	if rec.currentIndex() < 0 {
		return invalid("current", "app %s: v%d is not in its history", app.Name, app.Current.Number)
	}
	if err := (SecretChange{Set: secrets}).validate(); err != nil {
		return err
	}
	s.refMu.Lock()
	defer s.refMu.Unlock()
	if _, err := s.StatImage(app.Current.Digest); err != nil {
		return err
	}
	if f := app.Current.Settings.Files; f != "" {
		if _, err := s.StatImage(f); err != nil {
			return fmt.Errorf("files layer: %w", err)
		}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		seq := tx.Bucket(bucketSeq)
		last, _ := strconv.Atoi(string(seq.Get([]byte(app.Name))))
		for _, v := range rec.History {
			last = max(last, v.Number)
		}
		if err := seq.Put([]byte(app.Name), []byte(strconv.Itoa(last))); err != nil {
			return err
		}
		b := tx.Bucket(bucketSecrets)
		if len(secrets) == 0 {
			if err := b.Delete([]byte(app.Name)); err != nil {
				return err
			}
		} else {
			raw, err := json.Marshal(secrets)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(app.Name), raw); err != nil {
				return err
			}
		}
		return putApp(tx, rec)
	})
	if err != nil {
		return fmt.Errorf("replace %s: %w", app.Name, err)
	}
	return nil
}

// ApplyTo returns secrets m of app name with c applied, under the rules
// ChangeSecrets enforces: each removed name must be set, and no name may
// be both a secret and a variable of env, the environment of the version
// that will be current. m is not modified.
func (c SecretChange) ApplyTo(name string, m map[string]string, env []string) (map[string]string, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	out := maps.Clone(m)
	if out == nil {
		out = map[string]string{}
	}
	for _, k := range c.Unset {
		if _, ok := out[k]; !ok {
			return nil, invalid("secret", "app %s has no secret %s (it has: %s)", name, k, namesOrNone(out))
		}
		delete(out, k)
	}
	maps.Copy(out, c.Set)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := out[k]; ok {
			return nil, fmt.Errorf("%s is both an env variable and a secret of app %s; remove one (--unset-env %s or dust secret rm %s %s): %w", k, name, k, name, k, ErrConflict)
		}
	}
	if err := (SecretChange{Set: out}).validate(); err != nil {
		return nil, err
	}
	return out, nil
}

// EncodeSettings is s in the store's own JSON form, the one each app
// record keeps. The cluster's shared records carry settings in this form,
// so that every setting the store keeps replicates without a second list
// of fields to keep in step.
func EncodeSettings(s Settings) ([]byte, error) {
	return json.Marshal(toVersionRecord(Version{Settings: s}).Settings)
}

// DecodeSettings parses what EncodeSettings wrote. It does not validate:
// Replace does, as it does for a record of its own.
func DecodeSettings(b []byte) (Settings, error) {
	var r settingsRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return Settings{}, fmt.Errorf("settings: %w", err)
	}
	return versionRecord{Settings: r}.version().Settings, nil
}
