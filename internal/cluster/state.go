package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dust-run/dust/internal/store"
)

// Local is what a node asks of its own gateway.
type Local interface {
	// Store is the node's materialised view.
	Store() *store.Store
	// MaxImageSize bounds an image fetched from the object store.
	MaxImageSize() int64
	// Apply installs an app as the shared state now has it. Updates of
	// one app arrive in revision order; Apply ignores one it has seen.
	Apply(Update) error
	// Free lists the apps that have a free machine slot right now.
	Free() []string
	// Admit takes a slot for a forwarded request to app without waiting
	// and returns what serves it, or false when the app is full or not
	// live here.
	Admit(app string) (serve func(http.ResponseWriter, *http.Request), ok bool)
	// Load reports the machines serving now and the cap, and the
	// version of each app live here.
	Load() (live, max int, ready map[string]int)
}

// Update is one app as the shared state has it after a change.
type Update struct {
	Name string
	// App is nil when the app was removed.
	App      *store.App
	Secrets  map[string]string
	Revision uint64
}

// The record below is the apps bucket's JSON form, separate from the
// store's types so that the wire form does not follow their renames.
type appRecord struct {
	Name string `json:"name"`
	// Deleted marks a removed app: the record stays so that Last keeps a
	// (name, number) pair from ever naming two deploys.
	Deleted bool              `json:"deleted,omitempty"`
	Last    int               `json:"last"`
	Current int               `json:"current,omitempty"`
	History []versionRecord   `json:"history,omitempty"`
	Secrets map[string]string `json:"secrets,omitempty"`
}

type versionRecord struct {
	Number int    `json:"number"`
	Kind   string `json:"kind"`
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	// Settings is the store's own JSON form of the settings
	// (store.EncodeSettings): every setting the store keeps replicates,
	// including one added after this code was written.
	Settings  json.RawMessage `json:"settings"`
	CreatedAt time.Time       `json:"created_at"`
}

func toRecord(v store.Version) (versionRecord, error) {
	set, err := store.EncodeSettings(v.Settings)
	if err != nil {
		return versionRecord{}, err
	}
	return versionRecord{Number: v.Number, Kind: v.Kind, Digest: v.Digest, Size: v.Size, CreatedAt: v.CreatedAt, Settings: set}, nil
}

func (r versionRecord) version() (store.Version, error) {
	set, err := store.DecodeSettings(r.Settings)
	if err != nil {
		return store.Version{}, fmt.Errorf("version %d: %w", r.Number, err)
	}
	return store.Version{Number: r.Number, Kind: r.Kind, Digest: r.Digest, Size: r.Size, CreatedAt: r.CreatedAt, Settings: set}, nil
}

// decodeRecord parses and checks a record read from the bucket under
// key. Peers are trusted but storage is not: a record that does not hold
// together is refused, never half-applied.
func decodeRecord(key string, b []byte) (appRecord, error) {
	var r appRecord
	if len(b) > maxRecord {
		return r, fmt.Errorf("app record %s: %d bytes, at most %d", key, len(b), maxRecord)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("app record %s: %w", key, err)
	}
	if err := store.ValidateName(r.Name); err != nil || keyFor(r.Name) != key {
		return r, fmt.Errorf("app record %s: names app %q", key, r.Name)
	}
	if r.Deleted {
		if len(r.History) != 0 {
			return r, fmt.Errorf("app record %s: removed, yet has a history", key)
		}
		return r, nil
	}
	if len(r.History) == 0 || len(r.History) > store.HistoryLimit {
		return r, fmt.Errorf("app record %s: %d versions (want 1 to %d)", key, len(r.History), store.HistoryLimit)
	}
	found := false
	for _, v := range r.History {
		if v.Number < 1 || v.Number > r.Last {
			return r, fmt.Errorf("app record %s: version %d outside 1..%d", key, v.Number, r.Last)
		}
		if err := store.ValidateKind(v.Kind); err != nil {
			return r, fmt.Errorf("app record %s: %w", key, err)
		}
		if err := store.ValidateDigest(v.Digest); err != nil {
			return r, fmt.Errorf("app record %s: %w", key, err)
		}
		sv, err := v.version()
		if err != nil {
			return r, fmt.Errorf("app record %s: %w", key, err)
		}
		if f := sv.Settings.Files; f != "" {
			if err := store.ValidateDigest(f); err != nil {
				return r, fmt.Errorf("app record %s: files layer: %w", key, err)
			}
		}
		found = found || v.Number == r.Current
	}
	if !found {
		return r, fmt.Errorf("app record %s: current version %d is not in its history", key, r.Current)
	}
	return r, nil
}

// app is the record as the store's App; nil for a removed app.
func (r appRecord) app() (*store.App, error) {
	if r.Deleted {
		return nil, nil
	}
	a := &store.App{Name: r.Name}
	for _, vr := range r.History {
		v, err := vr.version()
		if err != nil {
			return nil, fmt.Errorf("app record %s: %w", r.Name, err)
		}
		a.History = append(a.History, v)
		if v.Number == r.Current {
			a.Current = v
		}
	}
	return a, nil
}

// update is the Update rec describes at revision rev.
func (rec appRecord) update(rev uint64) (Update, error) {
	a, err := rec.app()
	if err != nil {
		return Update{}, err
	}
	return Update{Name: rec.Name, App: a, Secrets: rec.Secrets, Revision: rev}, nil
}

func keyFor(app string) string { return "app." + app }

// change applies f to app name's record with compare-and-set, so that two
// nodes changing one app at once cannot lose either change: the loser
// gets store.ErrConflict. expect is the current version the caller's view
// had (0: none); a record whose current version differs means the view
// is behind and f's inputs are stale.
//
// Each read and write is an attempt of stepTimeout, retried until
// quorumWait (retry). A write whose attempt timed out may still have been
// recorded (its proposal reached the stream's leader before the
// acknowledgement was lost), so before a later attempt counts a changed
// record as someone else's change it compares it with what every earlier
// attempt wrote: a match is this change, done.
func (n *Node) change(ctx context.Context, op, name string, expect int, f func(*appRecord) error) (Update, error) {
	ctx, cancel := context.WithTimeout(ctx, quorumWait)
	defer cancel()
	key := keyFor(name)
	var maybe [][]byte // what attempts that got no answer wrote
	// A read may be answered by a replica a moment behind its leader
	// (KV reads are direct gets, which followers serve): a conflict is
	// read again a few times before it is believed.
	conflicts := 0
	stale := func() bool {
		if conflicts++; conflicts > staleReads {
			return false
		}
		select {
		case <-time.After(retryPause):
		case <-ctx.Done():
		}
		return ctx.Err() == nil
	}
	for {
		var rec appRecord
		var rev uint64
		var e jetstream.KeyValueEntry
		err := n.retry(ctx, op+": reading "+key, stepTimeout, func(ctx context.Context) (err error) {
			e, err = n.apps.Get(ctx, key)
			return err
		})
		switch {
		case err == nil:
			for _, b := range maybe {
				if bytes.Equal(b, e.Value()) {
					n.log.Info("a change whose acknowledgement was lost was recorded", "op", op, "app", name, "revision", e.Revision())
					return n.updateFrom(key, e.Value(), e.Revision())
				}
			}
			if rec, err = decodeRecord(key, e.Value()); err != nil {
				return Update{}, err
			}
			rev = e.Revision()
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rec = appRecord{Name: name}
		default:
			return Update{}, n.unavailable(op, err)
		}
		cur := 0
		if !rec.Deleted {
			cur = rec.Current
		}
		if cur != expect {
			if stale() {
				continue
			}
			return Update{}, fmt.Errorf("%s %s: %w: the app changed on another node meanwhile (now v%d, this node saw v%d); try again",
				op, name, store.ErrConflict, cur, expect)
		}
		if err := f(&rec); err != nil {
			return Update{}, err
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return Update{}, err
		}
		if len(b) > maxRecord {
			return Update{}, fmt.Errorf("%s %s: %w: the app's record would take %d bytes, at most %d (fewer or smaller env variables)", op, name, store.ErrInvalid, len(b), maxRecord)
		}
		// One write attempt: a retry goes back to the read above, which
		// tells a lost acknowledgement from a conflict.
		if err := n.quorumReachable(); err != nil {
			return Update{}, n.unavailable(op, err)
		}
		wctx, wcancel := context.WithTimeout(ctx, stepTimeout)
		t0 := time.Now()
		if rev == 0 {
			rev, err = n.apps.Create(wctx, key, b)
		} else {
			rev, err = n.apps.Update(wctx, key, b, rev)
		}
		wcancel()
		switch {
		case err == nil:
			return rec.update(rev)
		case (errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err)) && len(maybe) == 0:
			if stale() {
				continue
			}
			return Update{}, fmt.Errorf("%s %s: %w: the app changed on another node meanwhile; try again", op, name, store.ErrConflict)
		case errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err):
			// Perhaps an earlier attempt's write: the read tells.
		case ctx.Err() != nil:
			return Update{}, n.unavailable(op, err)
		default:
			n.log.Info("shared state did not acknowledge a write; checking and retrying", "step", op+": writing "+key,
				"waited", time.Since(t0).Round(time.Millisecond), "err", err)
			maybe = append(maybe, b)
		}
	}
}

// staleReads is how many times a conflict is read again.
const staleReads = 3

// updateFrom is the Update a stored record describes.
func (n *Node) updateFrom(key string, b []byte, rev uint64) (Update, error) {
	rec, err := decodeRecord(key, b)
	if err != nil {
		return Update{}, err
	}
	return rec.update(rev)
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// DeployRequest is one deploy: a new version of Name, numbered by the
// shared state.
type DeployRequest struct {
	Name, Kind, Digest string
	Size               int64
	Settings           store.Settings
	Secrets            store.SecretChange
	// Expect is the current version the deploying node's view has (0:
	// none).
	Expect int
}

// Deploy publishes the image (if the object store lacks it) and records a
// new current version. It returns once both are stored with a quorum of
// their replicas: that is when the deploy is acknowledged.
func (n *Node) Deploy(ctx context.Context, d DeployRequest) (Update, error) {
	if err := n.publishImage(ctx, d.Digest); err != nil {
		return Update{}, err
	}
	if f := d.Settings.Files; f != "" {
		if err := n.publishImage(ctx, f); err != nil {
			return Update{}, fmt.Errorf("files layer: %w", err)
		}
	}
	return n.change(ctx, "deploy", d.Name, d.Expect, func(r *appRecord) error {
		secrets, err := d.Secrets.ApplyTo(d.Name, r.Secrets, d.Settings.Env)
		if err != nil {
			return err
		}
		if r.Deleted {
			*r = appRecord{Name: d.Name, Last: r.Last}
		}
		for _, v := range r.History {
			r.Last = max(r.Last, v.Number)
		}
		r.Last++
		v := store.Version{Number: r.Last, Kind: d.Kind, Digest: d.Digest, Size: d.Size, Settings: d.Settings,
			CreatedAt: time.Now().UTC().Round(0)}
		vr, err := toRecord(v)
		if err != nil {
			return err
		}
		r.History = append(r.History, vr)
		if len(r.History) > store.HistoryLimit {
			r.History = append([]versionRecord(nil), r.History[len(r.History)-store.HistoryLimit:]...)
		}
		r.Current = v.Number
		r.Secrets = secrets
		return nil
	})
}

// Rollback makes version to current again; expect is the version current
// in the caller's view, which prepared to.
func (n *Node) Rollback(ctx context.Context, name string, expect, to int) (Update, error) {
	return n.change(ctx, "rollback", name, expect, func(r *appRecord) error {
		for _, v := range r.History {
			if v.Number == to {
				r.Current = to
				return nil
			}
		}
		return fmt.Errorf("rollback %s: %w: v%d is not kept", name, store.ErrNotFound, to)
	})
}

// Remove records that app name is gone.
func (n *Node) Remove(ctx context.Context, name string, expect int) (Update, error) {
	return n.change(ctx, "rm", name, expect, func(r *appRecord) error {
		if r.Deleted || len(r.History) == 0 {
			return fmt.Errorf("app %q: %w", name, store.ErrNotFound)
		}
		last := r.Last
		*r = appRecord{Name: name, Deleted: true, Last: last}
		return nil
	})
}

// ChangeSecrets applies sc to app name's secrets.
func (n *Node) ChangeSecrets(ctx context.Context, name string, expect int, sc store.SecretChange) (Update, error) {
	return n.change(ctx, "secrets", name, expect, func(r *appRecord) error {
		if r.Deleted || len(r.History) == 0 {
			return fmt.Errorf("app %q: %w", name, store.ErrNotFound)
		}
		a, err := r.app()
		if err != nil {
			return err
		}
		m, err := sc.ApplyTo(name, r.Secrets, a.Current.Settings.Env)
		r.Secrets = m
		return err
	})
}
