package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	digestPrefix = "sha256:"
	// tempPrefix marks uploads in progress. A digest name is pure hex, so
	// the two can never be confused.
	tempPrefix = ".upload-"
	// tempGrace is how long an upload may go without writing a byte
	// before GC takes its temporary file for abandoned.
	tempGrace = time.Hour
)

// ValidateDigest checks that d is "sha256:" followed by 64 lower-case hex
// digits. Digests become file names, so this is what keeps a client from
// naming any other file.
func ValidateDigest(d string) error {
	hexPart, ok := strings.CutPrefix(d, digestPrefix)
	if !ok || !isHexDigest(hexPart) {
		return invalid("digest", "%q (want sha256:<64 lower-case hex digits>)", d)
	}
	return nil
}

func isHexDigest(h string) bool {
	if len(h) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func (s *Store) imagePath(digest string) (string, error) {
	if err := ValidateDigest(digest); err != nil {
		return "", err
	}
	return filepath.Join(s.images, strings.TrimPrefix(digest, digestPrefix)), nil
}

// PutImage stores the bytes of r, at most max of them, and returns their
// digest and size. Storing content that is already there succeeds.
// Beyond max it fails with ErrImageTooLarge and leaves nothing behind.
func (s *Store) PutImage(r io.Reader, max int64) (digest string, size int64, err error) {
	if max <= 0 {
		return "", 0, invalid("max", "%d: an upload needs a positive size limit", max)
	}
	tmp, err := os.CreateTemp(s.images, tempPrefix+"*")
	if err != nil {
		return "", 0, fmt.Errorf("store: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, max+1))
	if err != nil {
		return "", 0, fmt.Errorf("store: writing image: %w", err)
	}
	if n > max {
		return "", 0, fmt.Errorf("store: %w: more than %d bytes", ErrImageTooLarge, max)
	}
	digest, err = s.commit(tmp, h.Sum(nil))
	if err != nil {
		return "", 0, err
	}
	committed = true
	return digest, n, nil
}

// commit makes the fully written temporary file tmp the blob named by its
// SHA-256 sum, durably, and closes it. The caller removes tmp on failure.
func (s *Store) commit(tmp *os.File, sum []byte) (string, error) {
	// Blobs are immutable; a read-only mode makes an accidental write
	// fail loudly instead of corrupting a digest.
	if err := tmp.Chmod(0o400); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("store: syncing %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	hexSum := hex.EncodeToString(sum)

	s.refMu.Lock()
	defer s.refMu.Unlock()
	// Renaming over an existing copy is deliberate: the content is the
	// same by construction, the replacement is atomic, it repairs a copy
	// damaged on disk, and the fresh mtime restarts the GC grace period
	// for a deploy that re-uploads an old blob.
	if err := os.Rename(tmp.Name(), filepath.Join(s.images, hexSum)); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	if err := syncDir(s.images); err != nil {
		// The rename happened (the caller's removal of tmp finds
		// nothing); only its durability is in doubt.
		return digestPrefix + hexSum, fmt.Errorf("store: syncing image directory: %w", err)
	}
	return digestPrefix + hexSum, nil
}

// OpenImage opens a stored image for reading. The caller closes it.
func (s *Store) OpenImage(digest string) (*os.File, error) {
	p, err := s.imagePath(digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image %s: %w", digest, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return f, nil
}

// StatImage returns the size of a stored image.
func (s *Store) StatImage(digest string) (int64, error) {
	p, err := s.imagePath(digest)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("image %s: %w", digest, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("store: %w", err)
	}
	return fi.Size(), nil
}

// ReadImage returns a stored image, at most max bytes of it, after
// checking that its content still hashes to digest: a damaged file must
// never be prepared and run as if it were the deployed one.
func (s *Store) ReadImage(digest string, max int64) ([]byte, error) {
	f, err := s.OpenImage(digest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("image %s: %w: %d bytes, at most %d allowed", digest, ErrImageTooLarge, fi.Size(), max)
	}
	buf := bytes.NewBuffer(make([]byte, 0, fi.Size()))
	if _, err := io.Copy(buf, io.LimitReader(f, max+1)); err != nil {
		return nil, fmt.Errorf("store: reading image %s: %w", digest, err)
	}
	if int64(buf.Len()) > max {
		return nil, fmt.Errorf("image %s: %w: grew beyond %d bytes while read", digest, ErrImageTooLarge, max)
	}
	sum := sha256.Sum256(buf.Bytes())
	if digestPrefix+hex.EncodeToString(sum[:]) != digest {
		return nil, fmt.Errorf("image %s: %w", digest, ErrDigestMismatch)
	}
	return buf.Bytes(), nil
}

// GC removes images and files layers that no version of any app references and that are
// older than GCGrace, and returns their digests. It is best effort: it
// removes what it can and reports the rest as an error.
func (s *Store) GC() ([]string, error) { return s.GCOlderThan(GCGrace) }

// GCOlderThan is GC with an explicit grace period; 0 removes every
// unreferenced image, which is only safe while no deploy is in progress.
func (s *Store) GCOlderThan(grace time.Duration) ([]string, error) {
	s.refMu.Lock()
	defer s.refMu.Unlock()
	refs, err := s.referenced()
	if err != nil {
		return nil, fmt.Errorf("store: gc: %w", err)
	}
	entries, err := os.ReadDir(s.images)
	if err != nil {
		return nil, fmt.Errorf("store: gc: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !isHexDigest(name) || refs[name] || !e.Type().IsRegular() {
			continue
		}
		if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < grace {
			continue
		}
		if err := os.Remove(filepath.Join(s.images, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, digestPrefix+name)
	}
	// Uploads abandoned without a crash (a caller that never returned)
	// would otherwise stay until the next Open.
	if err := removeTemps(s.images, max(grace, tempGrace)); err != nil {
		errs = append(errs, err)
	}
	if len(removed) > 0 {
		if err := syncDir(s.images); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("store: gc: %w", err)
	}
	return removed, nil
}

// referenced returns the hex digests some version of some app uses, as
// its image or its files layer. The
// caller holds refMu.
func (s *Store) referenced() (map[string]bool, error) {
	refs := make(map[string]bool)
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApps).ForEach(func(k, v []byte) error {
			rec, err := decodeApp(k, v)
			if err != nil {
				return err
			}
			for _, v := range rec.History {
				refs[strings.TrimPrefix(v.Digest, digestPrefix)] = true
				if f := v.Settings.Files; f != "" {
					refs[strings.TrimPrefix(f, digestPrefix)] = true
				}
			}
			return nil
		})
	})
	return refs, err
}

// RemoveUnreferenced removes those of digests that no version of any app
// references, at once rather than after GCGrace: for an upload that was
// refused, or the images of a removed app. The caller must know that no
// deploy still in progress has uploaded one of them (the gateway pins its
// uploads). It returns what it removed.
func (s *Store) RemoveUnreferenced(digests ...string) ([]string, error) {
	s.refMu.Lock()
	defer s.refMu.Unlock()
	refs, err := s.referenced()
	if err != nil {
		return nil, fmt.Errorf("store: remove images: %w", err)
	}
	var removed []string
	var errs []error
	for _, d := range digests {
		if err := ValidateDigest(d); err != nil {
			errs = append(errs, err)
			continue
		}
		h := strings.TrimPrefix(d, digestPrefix)
		if refs[h] {
			continue
		}
		switch err := os.Remove(filepath.Join(s.images, h)); {
		case err == nil:
			removed = append(removed, d)
		case !errors.Is(err, fs.ErrNotExist):
			errs = append(errs, err)
		}
	}
	if len(removed) > 0 {
		if err := syncDir(s.images); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("store: remove images: %w", err)
	}
	return removed, nil
}

// removeTemps removes upload temporaries older than age.
func removeTemps(dir string, age time.Duration) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		if age > 0 {
			if fi, err := e.Info(); err != nil || time.Since(fi.ModTime()) < age {
				continue
			}
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// syncDir makes a rename or removal in dir durable: fsyncing the file
// alone does not persist the directory entry that names it.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
