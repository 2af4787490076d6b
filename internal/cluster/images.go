package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dust-run/dust/internal/store"
)

// Moving images through the object store. An object's chunks are one
// stream's messages, so a put waits for every chunk's acknowledgement and
// a get reads through a consumer: both stall, without failing, while the
// stream has no leader. Each attempt is bounded by the object's size at a
// rate that any working link beats, and retried.
const (
	// fetchTimeout bounds all the attempts at fetching or putting one
	// image.
	fetchTimeout = 2 * time.Minute
	// objectStep is an object attempt's fixed part; objectRate the
	// slowest transfer rate an attempt is allowed.
	objectStep = 2 * time.Second
	objectRate = 8 << 20 // bytes per second
)

// objectAttempt bounds one attempt at moving size bytes.
func objectAttempt(size int64) time.Duration {
	return objectStep + time.Duration(size/objectRate)*time.Second
}

// objectName is an image's name in the object store: its hex digest, so
// that a name always means the same bytes.
func objectName(digest string) string { return strings.TrimPrefix(digest, "sha256:") }

// publishImage puts a stored image into the object store unless it is
// there already with the same size. Put returns once every chunk is
// acknowledged by a quorum of the stream's replicas.
func (n *Node) publishImage(ctx context.Context, digest string) error {
	if err := store.ValidateDigest(digest); err != nil {
		return err
	}
	st := n.localStore()
	if st == nil {
		return fmt.Errorf("%w: node is stopping", ErrUnavailable)
	}
	size, err := st.StatImage(digest)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, min(fetchTimeout, quorumWait+objectAttempt(size)))
	defer cancel()
	name := objectName(digest)
	var info *jetstream.ObjectInfo
	err = n.retry(ctx, "image upload: looking up "+name, stepTimeout, func(ctx context.Context) (err error) {
		info, err = n.images.GetInfo(ctx, name)
		return err
	})
	if err == nil && !info.Deleted && int64(info.Size) == size {
		return nil
	}
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return n.unavailable("image upload", err)
	}
	err = n.retry(ctx, "image upload: putting "+name, objectAttempt(size), func(ctx context.Context) error {
		f, err := st.OpenImage(digest)
		if err != nil {
			return fmt.Errorf("%w: %w", errLocal, err)
		}
		defer f.Close()
		_, err = n.images.Put(ctx, jetstream.ObjectMeta{Name: name, Description: digest}, f)
		return err
	})
	if errors.Is(err, errLocal) {
		return err
	}
	if err != nil {
		return n.unavailable("image upload", err)
	}
	return nil
}

// errLocal marks a failure of this node's own store inside a retried
// step: not the shared state's, so not retried.
var errLocal = errors.New("local store")

func (n *Node) localStore() *store.Store {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.local == nil {
		return nil
	}
	return n.local.Store()
}

// fetchCall is one image fetch in progress; others wanting the same
// digest wait for it rather than fetch the same bytes again.
type fetchCall struct {
	done chan struct{}
	err  error
}

// FetchImage makes sure the local store holds image digest, fetching it
// from the object store if not, in bounded attempts (at most fetchTimeout
// in all). Concurrent fetches of one digest are one fetch. The bytes are
// checked twice: the object store checks its own SHA-256 at the end of
// the read, and the local store names what it wrote by the digest of the
// bytes, which must be digest.
func (n *Node) FetchImage(ctx context.Context, digest string) error {
	if err := store.ValidateDigest(digest); err != nil {
		return err
	}
	n.mu.Lock()
	local := n.local
	if local == nil {
		n.mu.Unlock()
		return fmt.Errorf("%w: node is stopping", ErrUnavailable)
	}
	st := local.Store()
	if _, err := st.StatImage(digest); err == nil {
		n.mu.Unlock()
		return nil
	}
	c := n.fetches[digest]
	if c == nil {
		c = &fetchCall{done: make(chan struct{})}
		n.fetches[digest] = c
		go func() {
			c.err = n.fetch(local, digest)
			n.mu.Lock()
			delete(n.fetches, digest)
			n.mu.Unlock()
			close(c.done)
		}()
	}
	n.mu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return fmt.Errorf("image %s: %w", digest, ctx.Err())
	}
}

func (n *Node) fetch(local Local, digest string) error {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	st := local.Store()
	name := objectName(digest)
	t0 := time.Now()
	var info *jetstream.ObjectInfo
	err := n.retry(ctx, "image fetch: looking up "+name, stepTimeout, func(ctx context.Context) (err error) {
		info, err = n.images.GetInfo(ctx, name)
		return err
	})
	if err == nil && info.Deleted {
		err = jetstream.ErrObjectNotFound
	}
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("image %s: %w in the cluster's object store", digest, store.ErrNotFound)
	}
	if err != nil {
		return n.unavailable("image fetch", err)
	}
	limit := max(local.MaxImageSize(), store.MaxLayerUpload)
	if int64(info.Size) > limit {
		return fmt.Errorf("image %s: %d bytes in the object store, this node takes at most %d: %w", digest, info.Size, limit, store.ErrImageTooLarge)
	}
	var got string
	err = n.retry(ctx, "image fetch: reading "+name, objectAttempt(int64(info.Size)), func(ctx context.Context) error {
		obj, err := n.images.Get(ctx, name)
		if err != nil {
			return err
		}
		defer obj.Close()
		g, _, err := st.PutImage(obj, limit)
		if err != nil && (errors.Is(err, store.ErrImageTooLarge) || errors.Is(err, store.ErrLayerTooLarge)) {
			return fmt.Errorf("%w: %w", errLocal, err)
		}
		got = g
		return err
	})
	if errors.Is(err, errLocal) {
		return fmt.Errorf("image %s: fetching: %w", digest, err)
	}
	if err != nil {
		return n.unavailable("image fetch", err)
	}
	if got != digest {
		// Left for the store's GC: a deploy in progress may hold the
		// same bytes, which only the gateway's pins know.
		return fmt.Errorf("image %s: %w (the object store gave %s)", digest, store.ErrDigestMismatch, got)
	}
	if d := time.Since(t0); d > time.Second {
		n.log.Info("image fetched slowly", "digest", digest, "bytes", info.Size, "took", d.Round(time.Millisecond))
	}
	return nil
}
