package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The records below are the on-disk JSON form. They are separate from the
// API types so that renaming or re-tagging those (say, for the admin API's
// JSON) cannot silently change what an existing database decodes to.

type appRecord struct {
	Name    string          `json:"name"`
	Current int             `json:"current"` // a Number in History
	History []versionRecord `json:"history"`
}

type versionRecord struct {
	Number    int            `json:"number"`
	Kind      string         `json:"kind"`
	Digest    string         `json:"digest"`
	Size      int64          `json:"size"`
	Settings  settingsRecord `json:"settings"`
	CreatedAt time.Time      `json:"created_at"`
}

type settingsRecord struct {
	Route             string   `json:"route"`
	Host              string   `json:"host,omitempty"`
	Memory            int64    `json:"memory,omitempty"`
	TimeoutNS         int64    `json:"timeout_ns,omitempty"`
	MaxConcurrency    int      `json:"max_concurrency,omitempty"`
	QueueLen          int      `json:"queue_len,omitempty"`
	QueueWaitNS       int64    `json:"queue_wait_ns,omitempty"`
	MaxBody           int64    `json:"max_body,omitempty"`
	PassAuthorization bool     `json:"pass_authorization,omitempty"`
	Env               []string `json:"env,omitempty"`
	// omitempty: records written before isolation modes existed lack the
	// field and decode to "", the default, as they should.
	Isolation string `json:"isolation,omitempty"`
	// Records written before fixed args and files existed lack these and
	// decode to none, WAGI's query args off.
	Args      []string `json:"args,omitempty"`
	QueryArgs bool     `json:"query_args,omitempty"`
	Files     string   `json:"files,omitempty"`
	// Records written before server apps existed decode to "": CGI.
	Serve string `json:"serve,omitempty"`
}

func toVersionRecord(v Version) versionRecord {
	s := v.Settings
	return versionRecord{
		Number: v.Number, Kind: v.Kind, Digest: v.Digest, Size: v.Size, CreatedAt: v.CreatedAt,
		Settings: settingsRecord{
			Route: s.Route, Host: s.Host, Memory: s.Memory, TimeoutNS: int64(s.Timeout),
			MaxConcurrency: s.MaxConcurrency, QueueLen: s.QueueLen, QueueWaitNS: int64(s.QueueWait),
			MaxBody: s.MaxBody, PassAuthorization: s.PassAuthorization, Env: s.Env,
			Isolation: s.Isolation, Args: s.Args, QueryArgs: s.QueryArgs, Files: s.Files, Serve: s.Serve,
		},
	}
}

func (r versionRecord) version() Version {
	s := r.Settings
	return Version{
		Number: r.Number, Kind: r.Kind, Digest: r.Digest, Size: r.Size, CreatedAt: r.CreatedAt,
		Settings: Settings{
			Route: s.Route, Host: s.Host, Memory: s.Memory, Timeout: time.Duration(s.TimeoutNS),
			MaxConcurrency: s.MaxConcurrency, QueueLen: s.QueueLen, QueueWait: time.Duration(s.QueueWaitNS),
			MaxBody: s.MaxBody, PassAuthorization: s.PassAuthorization, Env: append([]string(nil), s.Env...),
			Isolation: s.Isolation, Args: append([]string(nil), s.Args...), QueryArgs: s.QueryArgs, Files: s.Files, Serve: s.Serve,
		},
	}
}

func decodeApp(k, v []byte) (appRecord, error) {
	var rec appRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return rec, fmt.Errorf("app %q: decoding record: %w", k, err)
	}
	if rec.currentIndex() < 0 {
		return rec, fmt.Errorf("app %q: current version %d is not in its history", k, rec.Current)
	}
	return rec, nil
}

func (r appRecord) currentIndex() int {
	for i, v := range r.History {
		if v.Number == r.Current {
			return i
		}
	}
	return -1
}

// RollbackTarget is the version Rollback would make current: the one
// before Current in History. A gateway prepares it before calling Rollback,
// so both must agree on which one it is.
func (a App) RollbackTarget() (Version, error) { return a.RollbackTargetTo(0) }

// RollbackTargetTo is the version RollbackTo(n) would make current: version
// n, or with n == 0 the one before Current.
func (a App) RollbackTargetTo(n int) (Version, error) {
	if n != 0 {
		if n == a.Current.Number {
			return Version{}, invalid("rollback", "app %s: v%d is already current", a.Name, n)
		}
		for _, v := range a.History {
			if v.Number == n {
				return v, nil
			}
		}
		return Version{}, invalid("rollback", "app %s: v%d is not kept (kept: %s)", a.Name, n, a.keptList())
	}
	for i, v := range a.History {
		if v.Number == a.Current.Number {
			if i == 0 {
				break
			}
			return a.History[i-1], nil
		}
	}
	return Version{}, invalid("rollback", "app %s: no version before %d is kept", a.Name, a.Current.Number)
}

func (a App) keptList() string {
	var b []byte
	for i, v := range a.History {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = append(b, 'v')
		b = strconv.AppendInt(b, int64(v.Number), 10)
	}
	return string(b)
}

func (r appRecord) app() App {
	a := App{Name: r.Name, History: make([]Version, len(r.History))}
	for i, v := range r.History {
		a.History[i] = v.version()
	}
	a.Current = a.History[r.currentIndex()]
	return a
}

func getApp(tx *bolt.Tx, name string) (appRecord, error) {
	v := tx.Bucket(bucketApps).Get([]byte(name))
	if v == nil {
		return appRecord{}, fmt.Errorf("app %q: %w", name, ErrNotFound)
	}
	return decodeApp([]byte(name), v)
}

func putApp(tx *bolt.Tx, rec appRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketApps).Put([]byte(rec.Name), b)
}

// checkRoute refuses a route and host that another app's current version
// already serves: two apps answering the same requests is never intended.
func checkRoute(tx *bolt.Tx, name string, set settingsRecord) error {
	return tx.Bucket(bucketApps).ForEach(func(k, v []byte) error {
		if string(k) == name {
			return nil
		}
		other, err := decodeApp(k, v)
		if err != nil {
			return err
		}
		cur := other.History[other.currentIndex()].Settings
		if cur.Route == set.Route && cur.Host == set.Host {
			where := "any host"
			if set.Host != "" {
				where = "host " + set.Host
			}
			return fmt.Errorf("route %s on %s is served by app %q: %w", set.Route, where, other.Name, ErrConflict)
		}
		return nil
	})
}

// Deploy appends a new version of app name (creating the app) running the
// stored image digest with settings set, and makes it current, all in one
// transaction. set is normalized (see Settings.Normalize) and validated.
func (s *Store) Deploy(name, kind, digest string, set Settings) (App, error) {
	return s.DeployWithSecrets(name, kind, digest, set, SecretChange{})
}

// DeployWithSecrets is Deploy that also applies sc to the app's secrets in
// the same transaction: a new app's first request already sees them.
func (s *Store) DeployWithSecrets(name, kind, digest string, set Settings, sc SecretChange) (App, error) {
	if err := sc.validate(); err != nil {
		return App{}, err
	}
	if err := ValidateName(name); err != nil {
		return App{}, err
	}
	if err := ValidateKind(kind); err != nil {
		return App{}, err
	}
	set = set.Normalize()
	if err := set.Validate(); err != nil {
		return App{}, err
	}
	s.refMu.Lock()
	defer s.refMu.Unlock()
	size, err := s.StatImage(digest)
	if err != nil {
		return App{}, err
	}
	if set.Files != "" {
		if _, err := s.StatImage(set.Files); err != nil {
			return App{}, fmt.Errorf("files layer: %w", err)
		}
	}
	var app App
	err = s.db.Update(func(tx *bolt.Tx) error {
		rec, err := getApp(tx, name)
		if errors.Is(err, ErrNotFound) {
			rec = appRecord{Name: name}
		} else if err != nil {
			return err
		}
		v := versionRecord{
			Kind: kind, Digest: digest, Size: size,
			// Round(0) drops the monotonic reading so the returned App
			// equals what a later Get decodes.
			CreatedAt: time.Now().UTC().Round(0),
		}
		v.Settings = toVersionRecord(Version{Settings: set}).Settings
		if err := checkRoute(tx, name, v.Settings); err != nil {
			return err
		}
		seq := tx.Bucket(bucketSeq)
		last, _ := strconv.Atoi(string(seq.Get([]byte(name))))
		for _, h := range rec.History {
			last = max(last, h.Number) // a lost counter must not make numbers repeat
		}
		v.Number = last + 1
		if err := seq.Put([]byte(name), []byte(strconv.Itoa(v.Number))); err != nil {
			return err
		}
		rec.History = append(rec.History, v)
		if n := len(rec.History); n > HistoryLimit {
			rec.History = append([]versionRecord(nil), rec.History[n-HistoryLimit:]...)
		}
		rec.Current = v.Number
		app = rec.app()
		if err := changeSecrets(tx, name, sc, set.Env); err != nil {
			return err
		}
		return putApp(tx, rec)
	})
	if err != nil {
		return App{}, fmt.Errorf("deploy %s: %w", name, err)
	}
	return app, nil
}

// Rollback makes current the version before the current one in the
// history (see App.RollbackTarget). The version rolled back from stays in
// the history, and a later Deploy still numbers after it.
func (s *Store) Rollback(name string) (App, error) { return s.RollbackTo(name, 0) }

// RollbackTo makes version n current (n == 0: the one before the current
// one), settings and all, as App.RollbackTargetTo picks it.
func (s *Store) RollbackTo(name string, n int) (App, error) {
	s.refMu.Lock()
	defer s.refMu.Unlock()
	var app App
	err := s.db.Update(func(tx *bolt.Tx) error {
		rec, err := getApp(tx, name)
		if err != nil {
			return err
		}
		target, err := rec.app().RollbackTargetTo(n)
		if err != nil {
			return err
		}
		prev := toVersionRecord(target)
		if err := checkRoute(tx, name, prev.Settings); err != nil {
			return err
		}
		// GC keeps every image in a history, so a missing one means the
		// data directory was tampered with; better to refuse now than to
		// switch to a version that cannot start.
		if _, err := s.StatImage(prev.Digest); err != nil {
			return err
		}
		if f := prev.Settings.Files; f != "" {
			if _, err := s.StatImage(f); err != nil {
				return fmt.Errorf("files layer: %w", err)
			}
		}
		rec.Current = prev.Number
		app = rec.app()
		return putApp(tx, rec)
	})
	if err != nil {
		return App{}, fmt.Errorf("rollback %s: %w", name, err)
	}
	return app, nil
}

// Delete removes app name and its history. Its images become garbage for
// GC unless another app uses them.
func (s *Store) Delete(name string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketApps)
		if b.Get([]byte(name)) == nil {
			return fmt.Errorf("app %q: %w", name, ErrNotFound)
		}
		if err := tx.Bucket(bucketSecrets).Delete([]byte(name)); err != nil {
			return err
		}
		return b.Delete([]byte(name))
	})
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// Get returns app name.
func (s *Store) Get(name string) (App, error) {
	var app App
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, err := getApp(tx, name)
		if err != nil {
			return err
		}
		app = rec.app()
		return nil
	})
	return app, err
}

// List returns every app, sorted by name.
func (s *Store) List() ([]App, error) {
	var apps []App
	err := s.db.View(func(tx *bolt.Tx) error {
		// bbolt iterates keys in byte order, which for the name alphabet
		// is name order.
		return tx.Bucket(bucketApps).ForEach(func(k, v []byte) error {
			rec, err := decodeApp(k, v)
			if err != nil {
				return err
			}
			apps = append(apps, rec.app())
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: list: %w", err)
	}
	return apps, nil
}
