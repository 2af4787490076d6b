package store

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"
)

// A files layer is an app's read-only directory (mounted at /app), packed
// at deploy into one content-addressed blob beside the images. Its form
// is a tar stream (archive/tar) in canonical form:
//
//   - only regular files and directories; no links, devices or FIFOs;
//   - names relative, clean, valid UTF-8 without control characters, no
//     "." or ".." elements; directories end in "/";
//   - entries in walk order (depth first, names sorted within a directory;
//     path elements compared one by one), each directory before what is in
//     it, no name twice;
//   - mode 0644 for files and 0755 for directories, mtime 0, no owners.
//
// The server never stores what a client sent: it reads the stream through
// the same validator that reads a stored layer and writes the canonical
// form, so the same files always make the same digest, and a layer on disk
// is only ever what the validator accepted. A tar stream rather than an
// own format: `tar tvf` can look inside one, and Go's reader already
// copes with the format's many spellings (PAX, GNU long names).

// Bounds on a files layer. Every prepared app holds its layer in memory
// (the hvt kind a second copy), so they are bounds on memory too.
const (
	MaxLayerBytes   = 64 << 20 // file content in all
	MaxLayerEntries = 4096     // files and directories
	MaxLayerPath    = 1024     // bytes of one path
	MaxLayerName    = 255      // bytes of one path element
	MaxLayerDepth   = 32       // path elements
	// MaxLayerUpload bounds the tar stream: the content plus, per entry,
	// its header, a PAX header for a long name and padding.
	MaxLayerUpload = MaxLayerBytes + MaxLayerEntries*4096 + 4096
)

// Errors for a refused files layer; both name the entry and the rule.
var (
	ErrBadLayer      = errors.New("bad files layer")
	ErrLayerTooLarge = errors.New("files layer too large")
)

// LayerInfo summarises a layer.
type LayerInfo struct {
	Files, Dirs int
	Bytes       int64 // file content
}

// layerEntry is one validated entry: a relative, clean name ("a/b.txt").
type layerEntry struct {
	name string
	dir  bool
	size int64
}

// layerCheck validates entries one by one, in order, against the bounds
// and the canonical-form rules.
type layerCheck struct {
	prev  string
	dirs  map[string]bool // directories seen, by name; "." is the root
	info  LayerInfo
	count int
}

func newLayerCheck() *layerCheck { return &layerCheck{dirs: map[string]bool{".": true}} }

func badLayer(name, format string, args ...any) error {
	return fmt.Errorf("%w: %q: %s", ErrBadLayer, name, fmt.Sprintf(format, args...))
}

// header turns a tar header into an entry; root is set for the archive's
// own root directory ("./"), which carries nothing and is dropped.
func (c *layerCheck) header(h *tar.Header) (e layerEntry, root bool, err error) {
	raw := h.Name
	switch h.Typeflag {
	case tar.TypeDir:
		e.dir = true
	case tar.TypeReg, '\x00':
	case tar.TypeSymlink:
		return e, false, badLayer(raw, "is a symbolic link (to %q); a files layer holds regular files and directories only", h.Linkname)
	case tar.TypeLink:
		return e, false, badLayer(raw, "is a hard link (to %q); a files layer holds regular files and directories only", h.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return e, false, badLayer(raw, "is a device; a files layer holds regular files and directories only")
	case tar.TypeFifo:
		return e, false, badLayer(raw, "is a FIFO; a files layer holds regular files and directories only")
	default:
		return e, false, badLayer(raw, "has tar entry type %q; a files layer holds regular files and directories only", h.Typeflag)
	}
	name := strings.TrimPrefix(raw, "./")
	if e.dir || h.Typeflag == '\x00' {
		name = strings.TrimSuffix(name, "/")
	}
	if name == "" || name == "." {
		if !e.dir {
			return e, false, badLayer(raw, "a file without a name")
		}
		return e, true, nil
	}
	e.name, e.size = name, h.Size
	if e.dir {
		e.size = 0
	}
	return e, false, c.entry(e, h.Size)
}

// entry checks e, whose archive entry claims size bytes, and counts it.
func (c *layerCheck) entry(e layerEntry, size int64) error {
	name := e.name
	switch {
	case len(name) > MaxLayerPath:
		return fmt.Errorf("%w: %.60q...: a path of %d bytes, at most %d allowed", ErrBadLayer, name, len(name), MaxLayerPath)
	case !utf8.ValidString(name):
		return badLayer(name, "the name is not valid UTF-8")
	case strings.HasPrefix(name, "/"):
		return badLayer(name, "an absolute path; names in a files layer are relative to /app")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f {
			return badLayer(name, "the name holds control character %#x", c)
		}
	}
	elems := strings.Split(name, "/")
	if len(elems) > MaxLayerDepth {
		return badLayer(name, "%d directories deep, at most %d allowed", len(elems), MaxLayerDepth)
	}
	for _, el := range elems {
		switch {
		case el == "..":
			return badLayer(name, "a \"..\" element would climb out of /app")
		case el == "." || el == "":
			return badLayer(name, "not a clean path (a %q element)", el)
		case len(el) > MaxLayerName:
			return badLayer(name, "an element of %d bytes, at most %d allowed", len(el), MaxLayerName)
		}
	}
	if c.count++; c.count > MaxLayerEntries {
		return fmt.Errorf("%w: more than %d files and directories (at %q)", ErrLayerTooLarge, MaxLayerEntries, name)
	}
	if c.prev != "" && comparePaths(c.prev, name) >= 0 {
		if c.prev == name {
			return badLayer(name, "appears twice")
		}
		return badLayer(name, "comes after %q: entries must be in walk order (dust deploy --files packs them so)", c.prev)
	}
	if dir := path.Dir(name); !c.dirs[dir] {
		return badLayer(name, "its directory %q is not in the layer before it", dir)
	}
	c.prev = name
	if e.dir {
		c.dirs[name] = true
		c.info.Dirs++
		return nil
	}
	if size < 0 {
		return badLayer(name, "a negative size")
	}
	if size > MaxLayerBytes-c.info.Bytes {
		return fmt.Errorf("%w: more than %d MiB of file content (at %q, %d bytes)", ErrLayerTooLarge, MaxLayerBytes>>20, name, size)
	}
	c.info.Bytes += size
	c.info.Files++
	return nil
}

// comparePaths orders paths as fs.WalkDir visits them: element by
// element, so that "a" < "a/b" < "a-c".
func comparePaths(a, b string) int {
	for {
		ea, ra, moreA := strings.Cut(a, "/")
		eb, rb, moreB := strings.Cut(b, "/")
		if c := strings.Compare(ea, eb); c != 0 {
			return c
		}
		switch {
		case !moreA && !moreB:
			return 0
		case !moreA:
			return -1
		case !moreB:
			return 1
		}
		a, b = ra, rb
	}
}

// epoch is every entry's mtime: file times would make the same files
// hash differently on every checkout.
var epoch = time.Unix(0, 0).UTC()

func canonicalHeader(e layerEntry) *tar.Header {
	if e.dir {
		return &tar.Header{Typeflag: tar.TypeDir, Name: e.name + "/", Mode: 0o755, ModTime: epoch}
	}
	return &tar.Header{Typeflag: tar.TypeReg, Name: e.name, Size: e.size, Mode: 0o644, ModTime: epoch}
}

// readLayer reads the tar stream r, validating every entry, and calls
// each with every entry and (for a file) exactly its content. Errors wrap
// ErrBadLayer or ErrLayerTooLarge, or are each's.
func readLayer(r io.Reader, each func(e layerEntry, content io.Reader) error) (LayerInfo, error) {
	c := newLayerCheck()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return c.info, nil
		}
		if err != nil {
			if errors.Is(err, errUploadTooLarge) {
				return c.info, fmt.Errorf("%w: the tar stream is longer than %d bytes", ErrLayerTooLarge, MaxLayerUpload)
			}
			return c.info, fmt.Errorf("%w: not a tar stream, or a damaged one, after %d entries: %v", ErrBadLayer, c.count, err)
		}
		e, root, err := c.header(h)
		if err != nil {
			return c.info, err
		}
		if root {
			continue
		}
		var content io.Reader
		if !e.dir {
			content = &exactReader{r: tr, name: e.name, left: e.size}
		}
		if err := each(e, content); err != nil {
			return c.info, err
		}
	}
}

// exactReader gives a file's content and fails, naming the file, when the
// stream ends before its size.
type exactReader struct {
	r    io.Reader
	name string
	left int64
}

func (x *exactReader) Read(p []byte) (int, error) {
	if x.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > x.left {
		p = p[:x.left]
	}
	n, err := x.r.Read(p)
	x.left -= int64(n)
	if (err == io.EOF || err == io.ErrUnexpectedEOF) && x.left > 0 {
		err = badLayer(x.name, "the stream ends %d bytes before the file does", x.left)
	} else if errors.Is(err, errUploadTooLarge) {
		err = fmt.Errorf("%w: the tar stream is longer than %d bytes", ErrLayerTooLarge, MaxLayerUpload)
	} else if err != nil && err != io.EOF {
		err = badLayer(x.name, "reading its content: %v", err)
	}
	return n, err
}

// canonicalize reads a layer from src and writes its canonical form to dst.
func canonicalize(dst io.Writer, src io.Reader) (LayerInfo, error) {
	tw := tar.NewWriter(dst)
	info, err := readLayer(src, func(e layerEntry, content io.Reader) error {
		if err := tw.WriteHeader(canonicalHeader(e)); err != nil {
			return err
		}
		if content != nil {
			if _, err := io.Copy(tw, content); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return info, err
	}
	return info, tw.Close()
}

var errUploadTooLarge = errors.New("upload too large")

// capReader fails with errUploadTooLarge once more than max bytes came.
type capReader struct {
	r   io.Reader
	max int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.max < 0 {
		return 0, errUploadTooLarge
	}
	if int64(len(p)) > c.max+1 {
		p = p[:c.max+1]
	}
	n, err := c.r.Read(p)
	if c.max -= int64(n); c.max < 0 {
		return n, errUploadTooLarge
	}
	return n, err
}

// PutLayer reads a files layer (a tar stream, see the comment above) from
// r, validates it, and stores its canonical form. It returns the digest of
// that form. A refused layer leaves nothing behind; the error names the
// entry and the rule, wrapping ErrBadLayer or ErrLayerTooLarge.
func (s *Store) PutLayer(r io.Reader) (digest string, info LayerInfo, err error) {
	tmp, err := os.CreateTemp(s.images, tempPrefix+"*")
	if err != nil {
		return "", info, fmt.Errorf("store: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, h), 64<<10)
	if info, err = canonicalize(bw, &capReader{r: r, max: MaxLayerUpload}); err != nil {
		return "", info, err
	}
	if err := bw.Flush(); err != nil {
		return "", info, fmt.Errorf("store: writing files layer: %w", err)
	}
	digest, err = s.commit(tmp, h.Sum(nil))
	if err != nil {
		return "", info, err
	}
	committed = true
	return digest, info, nil
}

// ReadLayer returns a stored files layer as a read-only file system in
// memory, after checking that it still hashes to digest and is still a
// layer the validator accepts.
func (s *Store) ReadLayer(digest string) (*Layer, error) {
	f, err := s.OpenImage(digest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	r := &capReader{r: io.TeeReader(bufio.NewReaderSize(f, 64<<10), h), max: MaxLayerUpload}
	l, err := newLayer(r)
	if err != nil {
		return nil, fmt.Errorf("files layer %s: %w", digest, err)
	}
	// The end-of-archive blocks and anything after them count too.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("files layer %s: %w", digest, err)
	}
	if digestPrefix+hex.EncodeToString(h.Sum(nil)) != digest {
		return nil, fmt.Errorf("files layer %s: %w", digest, ErrDigestMismatch)
	}
	return l, nil
}

// PackDir writes dir as a files layer in canonical form to w: what `dust
// deploy --files DIR` uploads. It refuses, naming the path, what a layer
// cannot hold (a symbolic link, a device, a name that is not clean UTF-8)
// and a directory beyond the bounds, so that the user hears it before an
// upload.
func PackDir(w io.Writer, dir string) (LayerInfo, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return LayerInfo{}, err
	}
	defer root.Close()
	c := newLayerCheck()
	tw := tar.NewWriter(w)
	err = fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name == "." {
			return nil
		}
		shown := filepath.Join(dir, filepath.FromSlash(name))
		var e layerEntry
		switch t := d.Type(); {
		case t.IsDir():
			e = layerEntry{name: name, dir: true}
		case t.IsRegular():
			e = layerEntry{name: name}
		case t&fs.ModeSymlink != 0:
			return fmt.Errorf("%w: %s is a symbolic link; a files directory holds regular files and directories only (copy what it points to instead)", ErrBadLayer, shown)
		default:
			return fmt.Errorf("%w: %s is a %v, not a regular file or directory", ErrBadLayer, shown, t)
		}
		if e.dir {
			if err := c.entry(e, 0); err != nil {
				return err
			}
			return tw.WriteHeader(canonicalHeader(e))
		}
		f, err := root.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%w: %s is not a regular file", ErrBadLayer, shown)
		}
		e.size = st.Size()
		if err := c.entry(e, e.size); err != nil {
			return err
		}
		if err := tw.WriteHeader(canonicalHeader(e)); err != nil {
			return err
		}
		n, err := io.Copy(tw, io.LimitReader(f, e.size))
		if err == nil && n != e.size {
			err = fmt.Errorf("%s changed size while it was packed", shown)
		}
		return err
	})
	if err != nil {
		return c.info, err
	}
	return c.info, tw.Close()
}
