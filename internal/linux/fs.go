package linux

import (
	"hash/fnv"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The program's file tree:
//
//	/               read-only, lists app, dev, tmp
//	/app/...        Config.Files, read-only (absent when Files is nil)
//	/dev/null, /dev/zero, /dev/random, /dev/urandom
//	/tmp/...        per-process, in Go memory, at most tmpMaxBytes of file
//	                data and tmpMaxFiles files and directories
//
// Nothing else exists: /proc and /sys are ENOENT, which glibc and the Go
// runtime handle. There are no symbolic links, so paths are resolved
// lexically (path.Clean after joining with the directory they are
// relative to), and ".." at / stays at /: no path can name anything
// outside this tree.
const (
	tmpMaxBytes = 16 << 20
	tmpMaxFiles = 1024
)

type kind uint8

const (
	kRoot kind = iota
	kDevDir
	kDev
	kAppDir
	kApp
	kTmp // a file or directory of /tmp (tmp.dir says which)
	kStdin
	kStdout
	kStderr
	kPipe
	kEvent
	kEpoll
	kSock // a TCP socket (net.go)
)

type devKind uint8

const (
	devNull devKind = iota
	devZero
	devRandom
	devURandom
)

var devNames = []string{"null", "zero", "random", "urandom"}

// node is a resolved name (or an anonymous object: stdio, pipes, eventfds).
type node struct {
	kind kind
	path string
	dev  devKind
	tmp  *tmpNode
	info fs.FileInfo // kApp and kAppDir
}

func (n node) isDir() bool {
	switch n.kind {
	case kRoot, kDevDir, kAppDir:
		return true
	case kTmp:
		return n.tmp.dir
	}
	return false
}

// appName is n's name in Config.Files.
func appName(abs string) string {
	if abs == "/app" {
		return "."
	}
	return strings.TrimPrefix(abs, "/app/")
}

// resolve joins a guest path with the directory it is relative to
// (dirfd, or the cwd for AT_FDCWD) and cleans it. mustDir reports a
// trailing slash, which requires a directory.
func (p *Process) resolve(dirfd int32, name string) (abs string, mustDir bool, e unix.Errno) {
	if name == "" {
		return "", false, unix.ENOENT
	}
	base := p.st.cwd
	if name[0] != '/' && dirfd != unix.AT_FDCWD {
		f, e := p.file(dirfd)
		if e != 0 {
			return "", false, e
		}
		if !f.n.isDir() {
			return "", false, unix.ENOTDIR
		}
		base = f.n.path
	}
	for _, c := range strings.Split(name, "/") {
		if len(c) > nameMax {
			return "", false, unix.ENAMETOOLONG
		}
	}
	if name[0] != '/' {
		name = base + "/" + name
	}
	return path.Clean(name), strings.HasSuffix(name, "/"), 0
}

// lookup finds the node named by a clean absolute path.
func (p *Process) lookup(abs string) (node, unix.Errno) {
	n := node{path: abs}
	switch {
	case abs == "/":
		n.kind = kRoot
	case abs == "/dev":
		n.kind = kDevDir
	case strings.HasPrefix(abs, "/dev/"):
		i := slices.Index(devNames, abs[len("/dev/"):])
		if i < 0 {
			return n, unix.ENOENT
		}
		n.kind, n.dev = kDev, devKind(i)
	case abs == "/app" || strings.HasPrefix(abs, "/app/"):
		if p.cfg.Files == nil {
			return n, unix.ENOENT
		}
		fi, err := fs.Stat(p.cfg.Files, appName(abs))
		if err != nil {
			return n, unix.ENOENT
		}
		n.kind, n.info = kApp, fi
		if fi.IsDir() {
			n.kind = kAppDir
		} else if !fi.Mode().IsRegular() {
			// Only plain files and directories are served from the app.
			return n, unix.ENOENT
		}
	case abs == "/tmp" || strings.HasPrefix(abs, "/tmp/"):
		t := p.st.tmp.root
		for _, c := range strings.Split(strings.TrimPrefix(abs, "/tmp"), "/")[1:] {
			if !t.dir {
				return n, unix.ENOTDIR
			}
			if t = t.kids[c]; t == nil {
				return n, unix.ENOENT
			}
		}
		n.kind, n.tmp = kTmp, t
	default:
		return n, unix.ENOENT
	}
	return n, 0
}

// lookupDir finds a path's parent directory for creating or removing its
// last element, checking it is a /tmp directory (EROFS under /app,
// EACCES elsewhere: / and /dev belong to root).
func (p *Process) lookupParent(abs string) (*tmpNode, string, unix.Errno) {
	dir, base := path.Split(abs)
	dir = path.Clean(dir)
	d, e := p.lookup(dir)
	switch {
	case e != 0:
		return nil, "", e
	case !d.isDir():
		return nil, "", unix.ENOTDIR
	case d.kind == kAppDir:
		return nil, "", unix.EROFS
	case d.kind != kTmp:
		return nil, "", unix.EACCES
	}
	return d.tmp, base, 0
}

// tmpfs is a process's /tmp: a tree of nodes in Go memory.
type tmpfs struct {
	root  *tmpNode
	bytes int64 // file data held, orphans (unlinked but open) included
	files int   // nodes, the root excluded
}

type tmpNode struct {
	dir    bool
	kids   map[string]*tmpNode
	parent *tmpNode
	data   []byte
	mode   uint32 // permission bits
	ino    uint64
	nlink  int // names: 0 once unlinked
	opens  int // open file descriptions
	mtime  time.Time
}

func newTmpfs() *tmpfs {
	r := &tmpNode{dir: true, kids: map[string]*tmpNode{}, mode: 0o1777, ino: 7, nlink: 2}
	r.parent = r
	return &tmpfs{root: r}
}

func (p *Process) now() time.Time { return p.cfg.Now() }

// create adds a node named base to dir.
func (p *Process) tmpCreate(dir *tmpNode, base string, isDir bool, mode uint32) (*tmpNode, unix.Errno) {
	t := p.st.tmp
	if t.files >= tmpMaxFiles {
		return nil, unix.ENOSPC
	}
	p.st.inoSeq++
	n := &tmpNode{dir: isDir, parent: dir, mode: mode & 0o7777 &^ p.st.umask, ino: 1<<32 + p.st.inoSeq, mtime: p.now()}
	if isDir {
		n.kids = map[string]*tmpNode{}
		n.nlink = 2
	} else {
		n.nlink = 1
	}
	if dir != nil {
		dir.kids[base] = n
		dir.mtime = n.mtime
		if isDir {
			dir.nlink++
		}
	} else {
		n.nlink = 0 // O_TMPFILE: no name
	}
	t.files++
	return n, 0
}

// unlinkNode removes dir's entry base, freeing the node once nothing
// refers to it.
func (p *Process) tmpUnlink(dir *tmpNode, base string) {
	n := dir.kids[base]
	delete(dir.kids, base)
	dir.mtime = p.now()
	if n.dir {
		dir.nlink--
		n.nlink = 0
	} else {
		n.nlink--
	}
	p.tmpMaybeFree(n)
}

func (p *Process) tmpMaybeFree(n *tmpNode) {
	if n.nlink == 0 && n.opens == 0 {
		p.st.tmp.bytes -= int64(len(n.data))
		p.st.tmp.files--
		n.data = nil
	}
}

// tmpResize sets a file's size, within what /tmp may hold.
func (p *Process) tmpResize(n *tmpNode, size int64) unix.Errno {
	t := p.st.tmp
	cur := int64(len(n.data))
	if size <= cur {
		clear(n.data[size:])
		n.data = n.data[:size]
		t.bytes -= cur - size
		return 0
	}
	if size-cur > tmpMaxBytes-t.bytes {
		return unix.ENOSPC
	}
	if int64(cap(n.data)) < size {
		// Doubling, but never past what the whole of /tmp may still
		// hold, so host memory stays near the limit.
		c := min(max(size, 2*int64(cap(n.data))), cur+tmpMaxBytes-t.bytes)
		d := make([]byte, size, c)
		copy(d, n.data)
		n.data = d
	} else {
		n.data = n.data[:size]
	}
	t.bytes += size - cur
	n.mtime = p.now()
	return 0
}

// isAncestor reports whether a is d or one of d's ancestors.
func isAncestor(a, d *tmpNode) bool {
	for {
		if a == d {
			return true
		}
		if d.parent == d {
			return false
		}
		d = d.parent
	}
}

// dirent is one entry getdents64 returns.
type dirent struct {
	name string
	ino  uint64
	typ  uint8
}

func (p *Process) dirents(n node) []dirent {
	ents := []dirent{{".", p.ino(n), unix.DT_DIR}, {"..", 1, unix.DT_DIR}}
	switch n.kind {
	case kRoot:
		if p.cfg.Files != nil {
			ents = append(ents, dirent{"app", inoApp("/app"), unix.DT_DIR})
		}
		ents = append(ents, dirent{"dev", 2, unix.DT_DIR}, dirent{"tmp", p.st.tmp.root.ino, unix.DT_DIR})
	case kDevDir:
		for i, name := range devNames {
			ents = append(ents, dirent{name, 3 + uint64(i), unix.DT_CHR})
		}
	case kAppDir:
		list, _ := fs.ReadDir(p.cfg.Files, appName(n.path))
		for _, d := range list {
			typ := uint8(unix.DT_REG)
			if d.IsDir() {
				typ = unix.DT_DIR
			} else if !d.Type().IsRegular() {
				continue
			}
			ents = append(ents, dirent{d.Name(), inoApp(path.Join(n.path, d.Name())), typ})
		}
	case kTmp:
		if n.tmp.nlink == 0 {
			return nil // a removed directory is empty, even of . and ..
		}
		names := make([]string, 0, len(n.tmp.kids))
		for name := range n.tmp.kids {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			k := n.tmp.kids[name]
			typ := uint8(unix.DT_REG)
			if k.dir {
				typ = unix.DT_DIR
			}
			ents = append(ents, dirent{name, k.ino, typ})
		}
	}
	return ents
}

func inoApp(abs string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(abs))
	return h.Sum64()>>2 | 1<<61
}

// Device numbers, as the kernel's new_encode_dev packs them.
func mkdev(major, minor uint64) uint64 { return minor&0xff | major<<8 | (minor&^0xff)<<12 }

const (
	devRootFS = 1
	devAppFS  = 2
	devTmpFS  = 3
	devPipeFS = 4
	devDevFS  = 5
)

var devMinor = []uint64{3, 5, 8, 9} // null, zero, random, urandom: major 1

type statInfo struct {
	dev, ino, nlink, rdev uint64
	mode, uid, gid        uint32
	size                  int64
	mtime                 time.Time
}

func (p *Process) ino(n node) uint64 {
	switch n.kind {
	case kRoot:
		return 1
	case kDevDir:
		return 2
	case kDev:
		return 3 + uint64(n.dev)
	case kAppDir, kApp:
		return inoApp(n.path)
	case kTmp:
		return n.tmp.ino
	}
	return 0
}

func (p *Process) stat(f *ofile, n node) statInfo {
	s := statInfo{ino: p.ino(n), nlink: 1, mtime: p.st.start}
	switch n.kind {
	case kRoot, kDevDir, kAppDir:
		s.mode, s.nlink, s.dev = unix.S_IFDIR|0o555, 2, devRootFS
		if n.kind == kDevDir {
			s.dev = devDevFS
		}
		if n.kind == kAppDir {
			s.dev = devAppFS
			s.mtime = n.info.ModTime()
		}
	case kDev:
		s.mode, s.dev, s.rdev = unix.S_IFCHR|0o666, devDevFS, mkdev(1, devMinor[n.dev])
	case kApp:
		s.mode, s.dev, s.size, s.mtime = unix.S_IFREG|uint32(n.info.Mode().Perm())&0o555|0o444, devAppFS, n.info.Size(), n.info.ModTime()
	case kTmp:
		t := n.tmp
		s.dev, s.uid, s.gid, s.mtime, s.nlink = devTmpFS, uid, gid, t.mtime, uint64(t.nlink)
		if t.dir {
			s.mode = unix.S_IFDIR | t.mode
		} else {
			s.mode, s.size = unix.S_IFREG|t.mode, int64(len(t.data))
		}
	default: // stdio, pipes, eventfds: ours, anonymous
		s.dev, s.uid, s.gid = devPipeFS, uid, gid
		s.mode = unix.S_IFIFO | 0o600
		switch n.kind {
		case kEvent, kEpoll:
			s.mode = 0o600
		case kSock:
			s.mode = unix.S_IFSOCK | 0o777
		}
		if f != nil {
			s.ino = f.ino
		}
	}
	if s.mtime.IsZero() {
		s.mtime = time.Unix(0, 0)
	}
	return s
}

// statBytes is struct stat in the x86-64 kernel layout (144 bytes).
func statBytes(s statInfo) []byte {
	b := make([]byte, 144)
	le.PutUint64(b[0:], s.dev)
	le.PutUint64(b[8:], s.ino)
	le.PutUint64(b[16:], s.nlink)
	le.PutUint32(b[24:], s.mode)
	le.PutUint32(b[28:], s.uid)
	le.PutUint32(b[32:], s.gid)
	le.PutUint64(b[40:], s.rdev)
	le.PutUint64(b[48:], uint64(s.size))
	le.PutUint64(b[56:], 4096)
	le.PutUint64(b[64:], uint64((s.size+511)/512))
	sec, nsec := uint64(s.mtime.Unix()), uint64(s.mtime.Nanosecond())
	for off := 72; off <= 104; off += 16 { // atime, mtime, ctime
		le.PutUint64(b[off:], sec)
		le.PutUint64(b[off+8:], nsec)
	}
	return b
}

// statxBytes is struct statx (256 bytes), with every basic field.
func statxBytes(s statInfo) []byte {
	b := make([]byte, 256)
	le.PutUint32(b[0:], unix.STATX_BASIC_STATS)
	le.PutUint32(b[4:], 4096)
	le.PutUint32(b[16:], uint32(s.nlink))
	le.PutUint32(b[20:], s.uid)
	le.PutUint32(b[24:], s.gid)
	le.PutUint16(b[28:], uint16(s.mode))
	le.PutUint64(b[32:], s.ino)
	le.PutUint64(b[40:], uint64(s.size))
	le.PutUint64(b[48:], uint64((s.size+511)/512))
	sec, nsec := uint64(s.mtime.Unix()), uint32(s.mtime.Nanosecond())
	for _, off := range []int{64, 96, 112} { // atime, ctime, mtime (no btime)
		le.PutUint64(b[off:], sec)
		le.PutUint32(b[off+8:], nsec)
	}
	le.PutUint32(b[128:], uint32(unix.Major(s.rdev)))
	le.PutUint32(b[132:], uint32(unix.Minor(s.rdev)))
	le.PutUint32(b[136:], uint32(unix.Major(s.dev)))
	le.PutUint32(b[140:], uint32(unix.Minor(s.dev)))
	return b
}

// access checks mode (R_OK|W_OK|X_OK) against n as uid 1000 would get.
func (p *Process) access(n node, mode uint32) unix.Errno {
	if mode == 0 {
		return 0
	}
	if mode&unix.W_OK != 0 && (n.kind == kApp || n.kind == kAppDir) {
		return unix.EROFS
	}
	s := p.stat(nil, n)
	perm := s.mode & 0o7
	if s.uid == uid {
		perm = s.mode >> 6 & 0o7
	}
	if mode&^perm != 0 {
		return unix.EACCES
	}
	return 0
}
