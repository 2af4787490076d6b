package cluster

import (
	"context"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dust-run/dust/internal/store"
)

// Following the apps bucket. The watch goroutine only decodes records and
// hands each to its app's follower, so that one slow step (an image fetch
// waiting for a stream leader) delays that app alone, never the changes of
// the others nor a later change of the same app. A follower fetches what
// the newest record of its app needs, with per-step bounds and retries,
// and applies it; a newer record that arrives meanwhile supersedes the one
// it was working on. The watch itself is restarted when it ends or falls
// behind the bucket (its consumer lived on a node that died).

const (
	// watchCheckEvery is how often the watch is compared with the bucket.
	watchCheckEvery = 500 * time.Millisecond
	// watchLagMax is how long the bucket may be ahead of the watch before
	// the watch counts as stalled and is made again.
	watchLagMax = time.Second
	// followPauseMax caps the pause between a follower's attempts.
	followPauseMax = 5 * time.Second
)

// follower is one app's follower state (under Node.mu).
type follower struct {
	latest  Update // the newest record seen
	applied uint64 // the revision last applied (0: none)
	running bool
	wake    chan struct{}
}

// known is what this node knows of an app from the shared state before
// it has prepared it: enough to route a request for it elsewhere.
type known struct {
	settings store.Settings
	version  int
	revision uint64
}

// follow runs the watch, making it again when it ends or stalls.
func (n *Node) follow() {
	defer n.wg.Done()
	pause := retryPause
	for {
		w, err := n.apps.WatchAll(context.Background())
		if err != nil {
			n.log.Warn("watching the apps bucket failed; retrying", "err", err, "pause", pause)
			select {
			case <-n.stop:
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, followPauseMax)
			continue
		}
		pause = retryPause
		why := n.watch(w)
		// Stopping deletes the watch's consumer, which waits (5 s) for an
		// answer from a server that may be the dead one: not in the way.
		go w.Stop()
		if why == "" {
			return
		}
		n.log.Warn("the apps bucket watch is made again", "why", why)
	}
}

// watch delivers w's entries to the followers until w ends, stalls or the
// node stops (""), and says why it returned.
func (n *Node) watch(w jetstream.KeyWatcher) string {
	check := time.NewTicker(watchCheckEvery)
	defer check.Stop()
	var behindSince time.Time
	for {
		select {
		case <-n.stop:
			return ""
		case e, ok := <-w.Updates():
			if !ok {
				return "the watch ended (its consumer was deleted)"
			}
			if e == nil { // the initial values are all delivered
				n.mu.Lock()
				first := !n.synced
				n.synced = true
				n.mu.Unlock()
				if first {
					n.log.Info("caught up with the cluster's apps")
				}
				continue
			}
			n.mu.Lock()
			n.seen = max(n.seen, e.Revision())
			n.mu.Unlock()
			n.entry(e)
		case <-check.C:
			last, err := n.bucketLast()
			if err != nil {
				// No leader to ask: the watch may be fine; look again.
				continue
			}
			n.mu.Lock()
			seen := n.seen
			n.mu.Unlock()
			if last <= seen {
				behindSince = time.Time{}
				continue
			}
			if behindSince.IsZero() {
				behindSince = time.Now()
			} else if time.Since(behindSince) >= watchLagMax {
				n.log.Info("the apps bucket watch stalled", "bucket_revision", last, "watch_revision", seen,
					"behind_for", time.Since(behindSince).Round(time.Millisecond))
				return "it stalled behind the bucket"
			}
		}
	}
}

// bucketLast is the apps bucket's last revision, as its stream leader has it.
func (n *Node) bucketLast() (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	st, err := n.apps.Status(ctx)
	if err != nil {
		return 0, err
	}
	ks, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, nil
	}
	return ks.StreamInfo().State.LastSeq, nil
}

// entry hands one watched entry to its app's follower.
func (n *Node) entry(e jetstream.KeyValueEntry) {
	key := e.Key()
	if !strings.HasPrefix(key, "app.") {
		return
	}
	var u Update
	if e.Operation() != jetstream.KeyValuePut {
		// Records are never deleted (a removal is a record too); a purge
		// by hand means the app is gone.
		name := strings.TrimPrefix(key, "app.")
		if store.ValidateName(name) != nil {
			return
		}
		u = Update{Name: name, Revision: e.Revision()}
	} else {
		rec, err := decodeRecord(key, e.Value())
		if err == nil {
			u, err = rec.update(e.Revision())
		}
		if err != nil {
			n.log.Error("app record refused", "key", key, "revision", e.Revision(), "err", err)
			return
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	f := n.followers[u.Name]
	if f == nil {
		f = &follower{wake: make(chan struct{}, 1)}
		n.followers[u.Name] = f
	}
	if u.Revision <= f.latest.Revision {
		return // a replay after the watch was made again
	}
	f.latest = u
	if u.App != nil {
		n.known[u.Name] = known{settings: u.App.Current.Settings, version: u.App.Current.Number, revision: u.Revision}
	} else {
		delete(n.known, u.Name)
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
	if !f.running {
		f.running = true
		n.wg.Add(1)
		go n.followApp(u.Name, f)
	}
}

// followApp brings app name's local state to its newest record, and
// exits once it is there.
func (n *Node) followApp(name string, f *follower) {
	defer n.wg.Done()
	pause := retryPause
	for {
		n.mu.Lock()
		u := f.latest
		local := n.local
		if u.Revision <= f.applied || local == nil {
			f.running = false
			n.mu.Unlock()
			return
		}
		n.mu.Unlock()
		if err := n.install(local, u); err != nil {
			n.log.Warn("app change not installed yet; retrying", "app", name, "revision", u.Revision, "err", err, "pause", pause)
			select {
			case <-n.stop:
				return
			case <-f.wake: // a newer record: work on that one
			case <-time.After(pause):
			}
			pause = min(2*pause, followPauseMax)
			continue
		}
		pause = retryPause
		n.mu.Lock()
		f.applied = max(f.applied, u.Revision)
		n.mu.Unlock()
	}
}

// install fetches what u's current version needs, applies u, then fetches
// the images of the kept versions (so that a rollback needs nothing from
// the network), which is not fatal.
func (n *Node) install(local Local, u Update) error {
	if u.App != nil {
		for _, d := range blobs(u.App.Current) {
			if err := n.FetchImage(context.Background(), d); err != nil {
				return err
			}
		}
	}
	if err := local.Apply(u); err != nil {
		// The gateway logged why (a kind this node lacks, say); fetching
		// again would not change it, so the change counts as followed.
		n.log.Error("applying an app change", "app", u.Name, "revision", u.Revision, "err", err)
		return nil
	}
	if u.App != nil {
		for _, v := range u.App.History {
			if v.Number == u.App.Current.Number {
				continue
			}
			for _, d := range blobs(v) {
				if err := n.FetchImage(context.Background(), d); err != nil {
					n.log.Warn("image of a kept version not fetched", "app", u.Name, "version", v.Number, "err", err)
				}
			}
		}
	}
	return nil
}

// blobs are the stored objects a version needs: its image and its files
// layer, if it has one.
func blobs(v store.Version) []string {
	if v.Settings.Files != "" {
		return []string{v.Digest, v.Settings.Files}
	}
	return []string{v.Digest}
}

// Known lists the apps the shared state has, with their current
// settings, whether or not they are prepared on this node: the gateway
// routes a request for one it has not prepared to a node that has.
func (n *Node) Known() map[string]store.Settings {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]store.Settings, len(n.known))
	for name, k := range n.known {
		out[name] = k.settings
	}
	return out
}
