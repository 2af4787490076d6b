package store

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"path"
	"slices"
	"time"
)

// Layer is a files layer in memory: a read-only fs.FS, what a machine
// kind mounts at /app. It holds at most MaxLayerBytes of content and
// MaxLayerEntries entries (the validator's bounds), and nothing in it can
// be changed through it: every open file reads the shared bytes through
// its own offset.
type Layer struct {
	nodes map[string]*layerNode // by fs.ValidPath name; "." is the root
	info  LayerInfo
}

type layerNode struct {
	name     string // base name
	dir      bool
	data     []byte
	children []fs.DirEntry // a directory's, in name order
}

// newLayer reads a layer's tar stream into memory.
func newLayer(r io.Reader) (*Layer, error) {
	l := &Layer{nodes: map[string]*layerNode{".": {name: ".", dir: true}}}
	info, err := readLayer(r, func(e layerEntry, content io.Reader) error {
		n := &layerNode{name: path.Base(e.name), dir: e.dir}
		if !e.dir {
			n.data = make([]byte, e.size)
			if _, err := io.ReadFull(content, n.data); err != nil {
				return err
			}
		}
		l.nodes[e.name] = n
		// readLayer checked that the parent came before; walk order
		// makes children arrive in name order.
		p := l.nodes[path.Dir(e.name)]
		p.children = append(p.children, fs.FileInfoToDirEntry(n))
		return nil
	})
	if err != nil {
		return nil, err
	}
	l.info = info
	return l, nil
}

// LayerFrom reads a files layer's tar stream (what PackDir writes) into
// memory through the validator that reads a stored one, with the same
// bounds: a machine prepared from it outside the gateway (dust run
// --files) sees what a deploy would mount, and is refused what a deploy
// would be.
func LayerFrom(r io.Reader) (*Layer, error) {
	return newLayer(&capReader{r: r, max: MaxLayerUpload})
}

// Info is the layer's size.
func (l *Layer) Info() LayerInfo { return l.info }

func (l *Layer) lookup(op, name string) (*layerNode, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	n, ok := l.nodes[name]
	if !ok {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	return n, nil
}

// Open implements fs.FS.
func (l *Layer) Open(name string) (fs.File, error) {
	n, err := l.lookup("open", name)
	if err != nil {
		return nil, err
	}
	return &layerFile{layerNode: n, Reader: bytes.NewReader(n.data)}, nil
}

// Stat implements fs.StatFS.
func (l *Layer) Stat(name string) (fs.FileInfo, error) { return l.lookup("stat", name) }

// ReadFile implements fs.ReadFileFS; the caller gets its own copy.
func (l *Layer) ReadFile(name string) ([]byte, error) {
	n, err := l.lookup("readfile", name)
	if err != nil {
		return nil, err
	}
	if n.dir {
		return nil, &fs.PathError{Op: "readfile", Path: name, Err: errIsDir}
	}
	return slices.Clone(n.data), nil
}

// ReadDir implements fs.ReadDirFS.
func (l *Layer) ReadDir(name string) ([]fs.DirEntry, error) {
	n, err := l.lookup("readdir", name)
	if err != nil {
		return nil, err
	}
	if !n.dir {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errNotDir}
	}
	return slices.Clone(n.children), nil
}

var (
	errIsDir  = errors.New("is a directory")
	errNotDir = errors.New("not a directory")
)

// A layerNode is its own fs.FileInfo. Modes are read-only: nothing in a
// layer can be written, and the guest should not be told otherwise.
func (n *layerNode) Name() string { return n.name }
func (n *layerNode) Size() int64  { return int64(len(n.data)) }
func (n *layerNode) Mode() fs.FileMode {
	if n.dir {
		return fs.ModeDir | 0o555
	}
	return 0o444
}
func (n *layerNode) ModTime() time.Time { return epoch }
func (n *layerNode) IsDir() bool        { return n.dir }
func (n *layerNode) Sys() any           { return nil }

type layerFile struct {
	*layerNode
	*bytes.Reader // Read, ReadAt, Seek
	dirPos        int
	closed        bool
}

func (f *layerFile) Stat() (fs.FileInfo, error) { return f.layerNode, nil }

func (f *layerFile) Close() error {
	if f.closed {
		return fs.ErrClosed
	}
	f.closed = true
	return nil
}

// ReadDir implements fs.ReadDirFile, with its paging.
func (f *layerFile) ReadDir(n int) ([]fs.DirEntry, error) {
	if !f.dir {
		return nil, &fs.PathError{Op: "readdir", Path: f.name, Err: errNotDir}
	}
	rest := f.children[f.dirPos:]
	if n <= 0 {
		f.dirPos = len(f.children)
		return slices.Clone(rest), nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	rest = rest[:min(n, len(rest))]
	f.dirPos += len(rest)
	return slices.Clone(rest), nil
}
