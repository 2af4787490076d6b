// Package store is Dust's embedded app store: the apps deployed through the
// admin API, their version history, and the images they run, kept under one
// data directory so that a restarted gateway serves exactly what it served
// before.
//
// Layout of the data directory:
//
//	dir/dust.db               bbolt database (mode 0600): apps, version counters,
//	                          secrets, schema
//	dir/images/sha256/<hex>   images and files layers (PutLayer), named by the
//	                          SHA-256 of their bytes
//
// Durability rests on two rules. Image files only ever appear by rename of a
// fully written and fsynced temporary file, so a name always means complete
// content. Every app change is a single bbolt transaction, fsynced before it
// returns, so a deploy or rollback either happened or did not: a crash in the
// middle leaves the previous version current.
//
// A Store is safe for concurrent use by multiple goroutines.
package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Errors returned (wrapped) by the store; test with errors.Is.
var (
	ErrNotFound       = errors.New("not found")
	ErrInvalid        = errors.New("invalid")
	ErrConflict       = errors.New("conflict")
	ErrImageTooLarge  = errors.New("image too large")
	ErrDigestMismatch = errors.New("image content does not match its digest")
	ErrLocked         = errors.New("data directory is in use by another process")
	ErrSchema         = errors.New("unsupported store schema")
)

// Machine kinds an app version may have.
const (
	KindHVT  = "hvt"
	KindWasm = "wasm"
)

// HistoryLimit is how many versions an app keeps. Images referenced only by
// older versions become garbage for GC.
const HistoryLimit = 20

// LockTimeout bounds how long Open waits for the database lock. Another
// gateway on the same directory holds it for its whole life, so waiting
// longer would only turn a clear error into a hang.
var LockTimeout = time.Second

// GCGrace protects freshly uploaded images from GC: a deploy uploads its
// image first and references it only at the switch, after validation and
// preparation, so an unreferenced image younger than this is probably a
// deploy in progress.
var GCGrace = 15 * time.Minute

const schemaVersion = 1

var (
	bucketMeta = []byte("meta")
	bucketApps = []byte("apps")
	// bucketSeq keeps each name's last version number even after Delete, so
	// a (name, number) pair never names two different deploys.
	bucketSeq = []byte("seq")
	// bucketSecrets holds each app's secrets, apart from its versions:
	// version records are what the admin API shows, secrets never are.
	bucketSecrets = []byte("secrets")
	keySchema     = []byte("schema")
)

// Settings are an app's per-deploy settings. Zero values mean "the
// gateway's default".
type Settings struct {
	Route             string // path prefix, "/" or "/hello"
	Host              string // Host to match, lower-case, no port; "" matches any
	Memory            int64  // bytes
	Timeout           time.Duration
	MaxConcurrency    int // live machines for this app
	QueueLen          int // requests waiting for a machine; -1 means no queue
	QueueWait         time.Duration
	MaxBody           int64 // request body bytes
	PassAuthorization bool
	Env               []string // KEY=VALUE
	// Isolation is the app's isolation mode, machine.IsolationRestore or
	// machine.IsolationFresh; "" is the default (restore), kept as ""
	// so that apps deployed without choosing follow the default.
	Isolation string
	// Args are the fixed arguments after argv[0] (the request path) that
	// every request's program gets, as an interpreter gets its script.
	Args []string
	// QueryArgs opts in to WAGI's convention of passing the query's items
	// as further arguments; off, a URL cannot add options to argv.
	QueryArgs bool
	// Files is the digest of the files layer mounted read-only at /app
	// (see PutLayer); "" is none.
	Files string
	// Serve is how the app is spoken to: "" (CGI, the default) or
	// ServeHTTP, an HTTP server program given one connection per request
	// (internal/hvt/server.go).
	Serve string
}

// Serve modes.
const (
	ServeCGI  = "cgi" // normalised to "": the default
	ServeHTTP = "http"
)

// Version is one deploy of an app.
type Version struct {
	Number    int    // 1, 2, 3... per app name, never reused
	Kind      string // KindHVT or KindWasm
	Digest    string // "sha256:<hex>"
	Size      int64
	Settings  Settings
	CreatedAt time.Time
}

// App is a deployed app and its history.
type App struct {
	Name    string
	Current Version
	History []Version // oldest first, includes Current; at most HistoryLimit
}

// Store is an open data directory.
type Store struct {
	dir    string
	images string // dir/images/sha256
	db     *bolt.DB

	// refMu orders "reference an image" (Deploy, Rollback, PutImage's
	// rename) against GC's "find unreferenced images and remove them":
	// without it GC could delete an image between a deploy's existence check
	// and its commit.
	refMu sync.Mutex
}

// Open opens (creating if needed) the store in dir. It fails with ErrLocked
// after LockTimeout when another Store holds dir open.
func Open(dir string) (*Store, error) {
	images := filepath.Join(dir, "images", "sha256")
	if err := os.MkdirAll(images, 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	dbPath := filepath.Join(dir, "dust.db")
	db, err := bolt.Open(dbPath, 0o600, &bolt.Options{Timeout: LockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("store: %s: %w (no lock after %v)", dbPath, ErrLocked, LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", dbPath, err)
	}
	s := &Store{dir: dir, images: images, db: db}
	if err := s.init(); err != nil {
		db.Close()
		return nil, err
	}
	// Only now, holding the lock, can no upload be in flight: whatever
	// temporary files remain were abandoned by a crash.
	if err := removeTemps(images, 0); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: cleaning interrupted uploads: %w", err)
	}
	return s, nil
}

func (s *Store) init() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keySchema); v != nil {
			n, err := strconv.Atoi(string(v))
			if err != nil || n != schemaVersion {
				return fmt.Errorf("store: %w %q (this build reads %d)", ErrSchema, v, schemaVersion)
			}
		} else if err := meta.Put(keySchema, []byte(strconv.Itoa(schemaVersion))); err != nil {
			return err
		}
		for _, b := range [][]byte{bucketApps, bucketSeq, bucketSecrets} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
}

// Dir is the data directory the store was opened on.
func (s *Store) Dir() string { return s.dir }

// Close releases the database and its lock.
func (s *Store) Close() error {
	return s.db.Close()
}
