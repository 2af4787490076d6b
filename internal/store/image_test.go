package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func imageFiles(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.images)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestPutImage(t *testing.T) {
	s := openT(t, t.TempDir())
	content := bytes.Repeat([]byte("dust"), 100_000)
	sum := sha256.Sum256(content)
	want := "sha256:" + hex.EncodeToString(sum[:])

	d, n, err := s.PutImage(bytes.NewReader(content), int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	if d != want || n != int64(len(content)) {
		t.Errorf("PutImage = %s, %d; want %s, %d", d, n, want, len(content))
	}
	onDisk, err := os.ReadFile(filepath.Join(s.Dir(), "images", "sha256", hex.EncodeToString(sum[:])))
	if err != nil || !bytes.Equal(onDisk, content) {
		t.Errorf("file on disk: %d bytes, %v", len(onDisk), err)
	}

	// Idempotent: same digest, still exactly one file, no temporaries.
	d2, n2, err := s.PutImage(bytes.NewReader(content), 1<<30)
	if err != nil || d2 != d || n2 != n {
		t.Errorf("second PutImage = %s, %d, %v", d2, n2, err)
	}
	if files := imageFiles(t, s); len(files) != 1 {
		t.Errorf("image dir after two identical uploads: %v", files)
	}

	f, err := s.OpenImage(d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	f.Close()
	if err != nil || !bytes.Equal(got, content) {
		t.Errorf("OpenImage read %d bytes, %v", len(got), err)
	}
	if size, err := s.StatImage(d); err != nil || size != n {
		t.Errorf("StatImage = %d, %v", size, err)
	}

	// An empty image is still content with a digest.
	if d, n, err := s.PutImage(strings.NewReader(""), 1); err != nil || n != 0 ||
		d != "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Errorf("empty PutImage = %s, %d, %v", d, n, err)
	}
}

func TestPutImageLimit(t *testing.T) {
	s := openT(t, t.TempDir())
	if _, n, err := s.PutImage(strings.NewReader("12345"), 5); err != nil || n != 5 {
		t.Errorf("image of exactly max bytes: %d, %v", n, err)
	}
	_, _, err := s.PutImage(strings.NewReader("123456"), 5)
	if !errors.Is(err, ErrImageTooLarge) {
		t.Errorf("image of max+1 bytes: %v, want ErrImageTooLarge", err)
	}
	// A huge stream must be cut off, not read to the end.
	_, _, err = s.PutImage(io.MultiReader(strings.NewReader("x"), endless{}), 1<<20)
	if !errors.Is(err, ErrImageTooLarge) {
		t.Errorf("endless stream: %v, want ErrImageTooLarge", err)
	}
	_, _, err = s.PutImage(iotest.ErrReader(io.ErrUnexpectedEOF), 5)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("failing reader: %v, want its error", err)
	}
	if _, _, err := s.PutImage(strings.NewReader("x"), 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("max 0: %v, want ErrInvalid", err)
	}
	if files := imageFiles(t, s); len(files) != 1 {
		t.Errorf("failed uploads left files behind: %v", files)
	}
}

type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'z'
	}
	return len(p), nil
}

func TestReadImage(t *testing.T) {
	s := openT(t, t.TempDir())
	d := putT(t, s, "the real image")
	if b, err := s.ReadImage(d, 100); err != nil || string(b) != "the real image" {
		t.Fatalf("ReadImage = %q, %v", b, err)
	}
	if _, err := s.ReadImage(d, 5); !errors.Is(err, ErrImageTooLarge) {
		t.Errorf("ReadImage with a small max: %v, want ErrImageTooLarge", err)
	}

	// Damage the file the way a disk or a careless operator might.
	p := filepath.Join(s.images, strings.TrimPrefix(d, digestPrefix))
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("the fake image"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadImage(d, 100); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("ReadImage of a corrupted file: %v, want ErrDigestMismatch", err)
	}
	if err := os.Truncate(p, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadImage(d, 100); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("ReadImage of a truncated file: %v, want ErrDigestMismatch", err)
	}
	// Uploading the same content again repairs it.
	putT(t, s, "the real image")
	if b, err := s.ReadImage(d, 100); err != nil || string(b) != "the real image" {
		t.Errorf("ReadImage after re-upload = %q, %v", b, err)
	}
}

func TestOpenImageRejects(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)
	// Files a traversal would reach if the digest were used as a path.
	os.WriteFile(filepath.Join(dir, "x"), []byte("secret"), 0o600)
	for _, d := range badDigests {
		if f, err := s.OpenImage(d); !errors.Is(err, ErrInvalid) {
			if err == nil {
				f.Close()
			}
			t.Errorf("OpenImage(%q) = %v, want ErrInvalid", d, err)
		}
		if _, err := s.ReadImage(d, 100); !errors.Is(err, ErrInvalid) {
			t.Errorf("ReadImage(%q) = %v, want ErrInvalid", d, err)
		}
	}
	for _, d := range []string{"../x", "sha256:../x", "sha256:../../x"} {
		if _, err := s.OpenImage(d); !errors.Is(err, ErrInvalid) {
			t.Errorf("OpenImage(%q) = %v, want ErrInvalid", d, err)
		}
	}
	missing := "sha256:" + strings.Repeat("ab", 32)
	if _, err := s.OpenImage(missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenImage of a missing image: %v, want ErrNotFound", err)
	}
	if _, err := s.StatImage(missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("StatImage of a missing image: %v, want ErrNotFound", err)
	}
}

func TestGC(t *testing.T) {
	s := openT(t, t.TempDir())
	used, old, shared := putT(t, s, "used"), putT(t, s, "old"), putT(t, s, "shared")
	fresh := putT(t, s, "fresh upload, deploy in progress")
	deployT(t, s, "a", old, Settings{Route: "/a"})
	deployT(t, s, "a", used, Settings{Route: "/a"})
	deployT(t, s, "b", shared, Settings{Route: "/b"})
	deployT(t, s, "c", shared, Settings{Route: "/c"})

	// Age everything but the fresh upload past the grace period.
	past := time.Now().Add(-2 * max(GCGrace, tempGrace))
	for _, d := range []string{used, old, shared} {
		os.Chtimes(filepath.Join(s.images, strings.TrimPrefix(d, digestPrefix)), past, past)
	}
	stray := filepath.Join(s.images, tempPrefix+"stray")
	os.WriteFile(stray, []byte("abandoned"), 0o600)
	os.Chtimes(stray, past, past)
	unrelated := filepath.Join(s.images, "README")
	os.WriteFile(unrelated, []byte("not ours"), 0o600)

	if removed, err := s.GC(); err != nil || len(removed) != 0 {
		t.Errorf("GC with everything referenced or fresh removed %v, %v", removed, err)
	}
	if err := s.Delete("b"); err != nil {
		t.Fatal(err)
	}
	if removed, err := s.GC(); err != nil || len(removed) != 0 {
		t.Errorf("GC removed %v (%v) while app c still uses the image", removed, err)
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("old upload temporary survived GC: %v", err)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	removed, err := s.GC()
	if err != nil || !slicesEqual(sorted(removed), sorted([]string{used, old})) {
		t.Errorf("GC after deleting a removed %v, %v; want %v", removed, err, []string{used, old})
	}
	removed, err = s.GCOlderThan(0)
	if err != nil || !slicesEqual(removed, []string{fresh}) {
		t.Errorf("GCOlderThan(0) removed %v, %v; want the fresh upload", removed, err)
	}
	if _, err := s.ReadImage(shared, 100); err != nil {
		t.Errorf("GC removed an image in use: %v", err)
	}
	if _, err := os.Stat(unrelated); err != nil {
		t.Errorf("GC removed a file it does not own: %v", err)
	}
}

func slicesEqual(a, b []string) bool {
	return strings.Join(a, ",") == strings.Join(b, ",")
}
