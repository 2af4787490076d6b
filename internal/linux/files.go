package linux

import (
	"golang.org/x/sys/unix"
)

func fdArg(a uint64) int32 { return int32(a) }

// ioLen is a read/write count as the kernel takes it: a size_t, cut to
// MAX_RW_COUNT.
func ioLen(n uint64) uint64 { return min(n, maxRW) }

func sysRead(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	b, e := p.upTo(a[1], ioLen(a[2]), true)
	if e != 0 {
		return fail(e)
	}
	return result(p.read(f, b, 0, false))
}

func sysWrite(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	b, e := p.upTo(a[1], ioLen(a[2]), false)
	if e != 0 {
		return fail(e)
	}
	return result(p.write(f, b, 0, false))
}

func sysPread(p *Process, a [6]uint64) Result  { return p.positional(a, false) }
func sysPwrite(p *Process, a [6]uint64) Result { return p.positional(a, true) }

func (p *Process) positional(a [6]uint64, write bool) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	off := int64(a[3])
	if off < 0 {
		return fail(unix.EINVAL)
	}
	b, e := p.upTo(a[1], ioLen(a[2]), !write)
	if e != 0 {
		return fail(e)
	}
	if write {
		return result(p.write(f, b, off, true))
	}
	return result(p.read(f, b, off, true))
}

// iovecs decodes an iovec array: at most UIO_MAXIOV entries, each length
// a non-negative ssize_t, the total cut to MAX_RW_COUNT as Linux does,
// and every buffer inside usable memory (else EFAULT).
func (p *Process) iovecs(addr, cnt uint64, write bool) ([][]byte, unix.Errno) {
	if cnt > maxIOV {
		return nil, unix.EINVAL
	}
	raw, e := p.rmem(addr, cnt*16)
	if e != 0 {
		return nil, e
	}
	var bufs [][]byte
	var total uint64
	for i := range cnt {
		base, n := le.Uint64(raw[16*i:]), le.Uint64(raw[16*i+8:])
		if n > 1<<63-1 {
			return nil, unix.EINVAL
		}
		n = min(n, maxRW-total)
		b, e := p.mem(base, n, write)
		if e != 0 {
			return nil, e
		}
		total += n
		if n > 0 {
			bufs = append(bufs, b)
		}
	}
	return bufs, 0
}

func sysReadv(p *Process, a [6]uint64) Result   { return p.vector(a, false, false) }
func sysWritev(p *Process, a [6]uint64) Result  { return p.vector(a, true, false) }
func sysPreadv(p *Process, a [6]uint64) Result  { return p.vector(a, false, true) }
func sysPwritev(p *Process, a [6]uint64) Result { return p.vector(a, true, true) }

func (p *Process) vector(a [6]uint64, write, pos bool) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	off := int64(a[3])
	if pos && off < 0 {
		return fail(unix.EINVAL)
	}
	bufs, e := p.iovecs(a[1], a[2], !write)
	if e != 0 {
		return fail(e)
	}
	total := 0
	for _, b := range bufs {
		var n int
		var err error
		if write {
			n, err = p.write(f, b, off, pos)
		} else {
			n, err = p.read(f, b, off, pos)
		}
		if err != nil {
			if total > 0 {
				if r := result(n, err); r.Action == ActionContinue {
					break // what was done is the answer; the error comes next call
				}
			}
			return result(n, err)
		}
		total += n
		off += int64(n)
		if n < len(b) {
			break
		}
	}
	return ok(uint64(total))
}

// Open flags Linux accepts and this tree can honour (O_NOFOLLOW and
// O_NOCTTY hold trivially: no symlinks, no terminals).
const openKnown = unix.O_ACCMODE | unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY | unix.O_TRUNC | unix.O_APPEND |
	unix.O_NONBLOCK | unix.O_DSYNC | unix.O_ASYNC | unix.O_DIRECT | oLargefile | unix.O_DIRECTORY |
	unix.O_NOFOLLOW | unix.O_NOATIME | unix.O_CLOEXEC | unix.O_SYNC | unix.O_PATH | unix.O_TMPFILE

func sysOpen(p *Process, a [6]uint64) Result {
	return p.openat(unix.AT_FDCWD, a[0], a[1], a[2])
}

func sysOpenat(p *Process, a [6]uint64) Result {
	return p.openat(fdArg(a[0]), a[1], a[2], a[3])
}

func sysCreat(p *Process, a [6]uint64) Result {
	return p.openat(unix.AT_FDCWD, a[0], unix.O_CREAT|unix.O_WRONLY|unix.O_TRUNC, a[1])
}

func (p *Process) openat(dirfd int32, pathAddr, flags64, mode64 uint64) Result {
	name, e := p.str(pathAddr, pathMax)
	if e != 0 {
		return fail(e)
	}
	flags := int(uint32(flags64)) &^ oLargefile
	mode := uint32(mode64) & 0o7777
	acc := flags & unix.O_ACCMODE
	if acc == unix.O_ACCMODE {
		return fail(unix.EINVAL)
	}
	if flags&unix.O_PATH != 0 {
		flags &= unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		acc = unix.O_RDONLY
	}
	abs, mustDir, e := p.resolve(dirfd, name)
	if e != 0 {
		return fail(e)
	}
	n, e := p.lookup(abs)
	switch {
	case flags&unix.O_TMPFILE == unix.O_TMPFILE:
		return p.openTmpfile(n, e, flags, mode)
	case e == unix.ENOENT && flags&unix.O_CREAT != 0:
		if mustDir {
			return fail(unix.EISDIR)
		}
		dir, base, e := p.lookupParent(abs)
		if e != 0 {
			return fail(e)
		}
		t, e := p.tmpCreate(dir, base, false, mode)
		if e != 0 {
			return fail(e)
		}
		n = node{kind: kTmp, path: abs, tmp: t}
	case e != 0:
		return fail(e)
	case flags&(unix.O_CREAT|unix.O_EXCL) == unix.O_CREAT|unix.O_EXCL:
		return fail(unix.EEXIST)
	case n.isDir():
		if flags&unix.O_PATH == 0 && (acc != unix.O_RDONLY || flags&(unix.O_CREAT|unix.O_TRUNC) != 0) {
			return fail(unix.EISDIR)
		}
	case flags&unix.O_DIRECTORY != 0 || mustDir:
		return fail(unix.ENOTDIR)
	case n.kind == kApp && (acc != unix.O_RDONLY || flags&unix.O_TRUNC != 0):
		return fail(unix.EROFS)
	case n.kind == kTmp && flags&unix.O_TRUNC != 0:
		p.tmpResize(n.tmp, 0)
	}
	f := p.newOfile(n, flags&(unix.O_ACCMODE|unix.O_PATH|statusFlags))
	fd, e := p.install(f, 0, flags&unix.O_CLOEXEC != 0)
	if e != 0 {
		return fail(e)
	}
	return ok(uint64(fd))
}

// openTmpfile serves O_TMPFILE: an unnamed file in a /tmp directory.
func (p *Process) openTmpfile(dir node, e unix.Errno, flags int, mode uint32) Result {
	switch {
	case e != 0:
		return fail(e)
	case !dir.isDir():
		return fail(unix.ENOTDIR)
	case flags&unix.O_ACCMODE == unix.O_RDONLY:
		return fail(unix.EINVAL)
	case dir.kind == kAppDir:
		return fail(unix.EROFS)
	case dir.kind != kTmp:
		return fail(unix.EOPNOTSUPP)
	}
	t, e := p.tmpCreate(nil, "", false, mode)
	if e != 0 {
		return fail(e)
	}
	f := p.newOfile(node{kind: kTmp, path: dir.path + "/#tmpfile", tmp: t}, flags&(unix.O_ACCMODE|statusFlags))
	fd, e := p.install(f, 0, flags&unix.O_CLOEXEC != 0)
	if e != 0 {
		return fail(e)
	}
	return ok(uint64(fd))
}

func sysClose(p *Process, a [6]uint64) Result {
	if !p.closeFD(int(fdArg(a[0]))) {
		return fail(unix.EBADF)
	}
	return ok(0)
}

func sysFstat(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	return okOrFail(p.put(a[1], statBytes(p.stat(f, f.n))))
}

// statPath resolves (dirfd, path, flags) for the stat family, with
// AT_EMPTY_PATH meaning dirfd itself.
func (p *Process) statPath(dirfd int32, pathAddr uint64, flags uint64, known uint64) (*ofile, node, unix.Errno) {
	if flags&^known != 0 {
		return nil, node{}, unix.EINVAL
	}
	name, e := p.str(pathAddr, pathMax)
	if e != 0 {
		return nil, node{}, e
	}
	if name == "" && flags&unix.AT_EMPTY_PATH != 0 {
		if dirfd == unix.AT_FDCWD {
			n, e := p.lookup(p.st.cwd)
			return nil, n, e
		}
		f, e := p.file(dirfd)
		if e != 0 {
			return nil, node{}, e
		}
		return f, f.n, 0
	}
	abs, mustDir, e := p.resolve(dirfd, name)
	if e != 0 {
		return nil, node{}, e
	}
	n, e := p.lookup(abs)
	if e == 0 && mustDir && !n.isDir() {
		e = unix.ENOTDIR
	}
	return nil, n, e
}

const atStatFlags = unix.AT_SYMLINK_NOFOLLOW | unix.AT_EMPTY_PATH | unix.AT_NO_AUTOMOUNT

func sysStat(p *Process, a [6]uint64) Result {
	return p.fstatat(unix.AT_FDCWD, a[0], a[1], 0)
}

func sysNewfstatat(p *Process, a [6]uint64) Result {
	return p.fstatat(fdArg(a[0]), a[1], a[2], a[3])
}

func (p *Process) fstatat(dirfd int32, pathAddr, buf, flags uint64) Result {
	f, n, e := p.statPath(dirfd, pathAddr, flags, atStatFlags)
	if e != 0 {
		return fail(e)
	}
	return okOrFail(p.put(buf, statBytes(p.stat(f, n))))
}

func sysStatx(p *Process, a [6]uint64) Result {
	const known = atStatFlags | atStatxSyncType
	if a[2]&atStatxSyncType == atStatxSyncType || a[3]&unix.STATX__RESERVED != 0 {
		return fail(unix.EINVAL)
	}
	f, n, e := p.statPath(fdArg(a[0]), a[1], a[2], known)
	if e != 0 {
		return fail(e)
	}
	return okOrFail(p.put(a[4], statxBytes(p.stat(f, n))))
}

func sysLseek(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	if !seekable(f) {
		return fail(unix.ESPIPE)
	}
	off, whence := int64(a[1]), a[2]
	if f.n.kind == kDev {
		return ok(0) // character devices ignore the offset
	}
	var size int64
	switch f.n.kind {
	case kApp:
		size = f.n.info.Size()
	case kTmp:
		size = int64(len(f.n.tmp.data))
	}
	var base int64
	switch whence {
	case unix.SEEK_SET:
	case unix.SEEK_CUR:
		base = f.off
	case unix.SEEK_END:
		base = size
	case unix.SEEK_DATA, unix.SEEK_HOLE:
		if f.n.isDir() {
			return fail(unix.EINVAL)
		}
		if off < 0 || off >= size {
			return fail(unix.ENXIO)
		}
		if whence == unix.SEEK_HOLE {
			off = size
		}
	default:
		return fail(unix.EINVAL)
	}
	if (off > 0 && base > 1<<63-1-off) || base+off < 0 {
		return fail(unix.EINVAL)
	}
	f.off = base + off
	return ok(uint64(f.off))
}

func sysGetdents64(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	if f.flags&unix.O_PATH != 0 {
		return fail(unix.EBADF)
	}
	if !f.n.isDir() {
		return fail(unix.ENOTDIR)
	}
	buf, e := p.upTo(a[1], min(a[2], maxRW), true)
	if e != 0 {
		return fail(e)
	}
	ents := p.dirents(f.n)
	used := 0
	for f.off >= 0 && f.off < int64(len(ents)) {
		d := ents[f.off]
		reclen := (19 + len(d.name) + 1 + 7) &^ 7
		if used+reclen > len(buf) {
			if used == 0 {
				return fail(unix.EINVAL)
			}
			break
		}
		r := buf[used : used+reclen]
		clear(r)
		le.PutUint64(r[0:], d.ino)
		le.PutUint64(r[8:], uint64(f.off+1))
		le.PutUint16(r[16:], uint16(reclen))
		r[18] = d.typ
		copy(r[19:], d.name)
		used += reclen
		f.off++
	}
	return ok(uint64(used))
}

func sysFcntl(p *Process, a [6]uint64) Result {
	fd := fdArg(a[0])
	f, e := p.file(fd)
	if e != 0 {
		return fail(e)
	}
	d := p.st.fds[fd]
	switch cmd, arg := a[1], a[2]; cmd {
	case unix.F_DUPFD, unix.F_DUPFD_CLOEXEC:
		if arg >= uint64(min64(p.st.rlim[unix.RLIMIT_NOFILE].cur, maxFDs)) {
			return fail(unix.EINVAL)
		}
		f.refs++
		nfd, e := p.install(f, int(arg), cmd == unix.F_DUPFD_CLOEXEC)
		if e != 0 {
			return fail(e)
		}
		return ok(uint64(nfd))
	case unix.F_GETFD:
		if d.cloexec {
			return ok(unix.FD_CLOEXEC)
		}
		return ok(0)
	case unix.F_SETFD:
		d.cloexec = arg&unix.FD_CLOEXEC != 0
		return ok(0)
	case unix.F_GETFL:
		return ok(uint64(f.flags | oLargefile))
	case unix.F_SETFL:
		if f.flags&unix.O_PATH != 0 {
			return fail(unix.EBADF)
		}
		const settable = unix.O_APPEND | unix.O_NONBLOCK | unix.O_ASYNC | unix.O_DIRECT | unix.O_NOATIME
		f.flags = f.flags&^settable | int(arg)&settable
		return ok(0)
	case unix.F_GETLK, unix.F_SETLK, unix.F_SETLKW, unix.F_OFD_GETLK, unix.F_OFD_SETLK, unix.F_OFD_SETLKW:
		// One process: every lock is granted, and a query finds none.
		b, e := p.wmem(arg, 32) // struct flock
		if e != 0 {
			return fail(e)
		}
		typ := le.Uint16(b)
		if typ > unix.F_UNLCK {
			return fail(unix.EINVAL)
		}
		if cmd == unix.F_GETLK || cmd == unix.F_OFD_GETLK {
			le.PutUint16(b, unix.F_UNLCK)
		}
		return ok(0)
	case unix.F_GETPIPE_SZ, unix.F_SETPIPE_SZ:
		if f.pipe == nil {
			return fail(unix.EBADF)
		}
		return ok(pipeCap)
	}
	return fail(unix.EINVAL)
}

func sysIoctl(p *Process, a [6]uint64) Result {
	fd := fdArg(a[0])
	f, e := p.file(fd)
	if e != 0 {
		return fail(e)
	}
	switch uint32(a[1]) {
	case fioclex, fionclex:
		p.st.fds[fd].cloexec = uint32(a[1]) == fioclex
		return ok(0)
	case fionbio:
		b, e := p.rmem(a[2], 4)
		if e != 0 {
			return fail(e)
		}
		f.flags &^= unix.O_NONBLOCK
		if le.Uint32(b) != 0 {
			f.flags |= unix.O_NONBLOCK
		}
		return ok(0)
	case fionread:
		if f.pipe == nil {
			break
		}
		return okOrFail(p.put32(a[2], uint32(len(f.pipe.buf))))
	}
	// No terminals: TCGETS, TIOCGWINSZ and the rest say "not a tty".
	return fail(unix.ENOTTY)
}

func sysDup(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	f.refs++
	fd, e := p.install(f, 0, false)
	if e != 0 {
		return fail(e)
	}
	return ok(uint64(fd))
}

func sysDup2(p *Process, a [6]uint64) Result {
	if fdArg(a[0]) == fdArg(a[1]) {
		if _, e := p.file(fdArg(a[0])); e != 0 {
			return fail(e)
		}
		return ok(uint64(fdArg(a[1])))
	}
	return p.dup3(fdArg(a[0]), fdArg(a[1]), 0)
}

func sysDup3(p *Process, a [6]uint64) Result {
	if a[2]&^unix.O_CLOEXEC != 0 || fdArg(a[0]) == fdArg(a[1]) {
		return fail(unix.EINVAL)
	}
	return p.dup3(fdArg(a[0]), fdArg(a[1]), a[2])
}

func (p *Process) dup3(old, nfd int32, flags uint64) Result {
	f, e := p.file(old)
	if e != 0 {
		return fail(e)
	}
	if nfd < 0 || uint64(nfd) >= min64(p.st.rlim[unix.RLIMIT_NOFILE].cur, maxFDs) {
		return fail(unix.EBADF)
	}
	p.closeFD(int(nfd))
	f.refs++
	if _, e := p.install(f, int(nfd), flags&unix.O_CLOEXEC != 0); e != 0 {
		return fail(e)
	}
	return ok(uint64(nfd))
}

func sysAccess(p *Process, a [6]uint64) Result {
	return p.faccessat(unix.AT_FDCWD, a[0], a[1], 0)
}

func sysFaccessat(p *Process, a [6]uint64) Result {
	return p.faccessat(fdArg(a[0]), a[1], a[2], 0)
}

func sysFaccessat2(p *Process, a [6]uint64) Result {
	return p.faccessat(fdArg(a[0]), a[1], a[2], a[3])
}

func (p *Process) faccessat(dirfd int32, pathAddr, mode, flags uint64) Result {
	if mode&^uint64(unix.R_OK|unix.W_OK|unix.X_OK) != 0 {
		return fail(unix.EINVAL)
	}
	_, n, e := p.statPath(dirfd, pathAddr, flags, unix.AT_EACCESS|unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH)
	if e != 0 {
		return fail(e)
	}
	return okOrFail(p.access(n, uint32(mode)))
}

func sysReadlink(p *Process, a [6]uint64) Result {
	return p.readlinkat(unix.AT_FDCWD, a[0], a[1], a[2])
}

func sysReadlinkat(p *Process, a [6]uint64) Result {
	return p.readlinkat(fdArg(a[0]), a[1], a[2], a[3])
}

// readlinkat: nothing here is a symbolic link.
func (p *Process) readlinkat(dirfd int32, pathAddr, buf, size uint64) Result {
	if int32(size) <= 0 {
		return fail(unix.EINVAL)
	}
	_, _, e := p.statPath(dirfd, pathAddr, unix.AT_EMPTY_PATH, unix.AT_EMPTY_PATH)
	if e != 0 {
		return fail(e)
	}
	return fail(unix.EINVAL)
}

func sysGetcwd(p *Process, a [6]uint64) Result {
	cwd := p.st.cwd + "\x00"
	if a[1] < uint64(len(cwd)) {
		return fail(unix.ERANGE)
	}
	return okOrFail2(p.put(a[0], []byte(cwd)), uint64(len(cwd)))
}

func sysChdir(p *Process, a [6]uint64) Result {
	_, n, e := p.statPath(unix.AT_FDCWD, a[0], 0, 0)
	if e != 0 {
		return fail(e)
	}
	return p.chdir(n)
}

func sysFchdir(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	return p.chdir(f.n)
}

func (p *Process) chdir(n node) Result {
	if !n.isDir() {
		return fail(unix.ENOTDIR)
	}
	if e := p.access(n, unix.X_OK); e != 0 {
		return fail(e)
	}
	p.st.cwd = n.path
	return ok(0)
}

func sysMkdir(p *Process, a [6]uint64) Result {
	return p.mkdirat(unix.AT_FDCWD, a[0], a[1])
}

func sysMkdirat(p *Process, a [6]uint64) Result {
	return p.mkdirat(fdArg(a[0]), a[1], a[2])
}

func (p *Process) mkdirat(dirfd int32, pathAddr, mode uint64) Result {
	name, e := p.str(pathAddr, pathMax)
	if e != 0 {
		return fail(e)
	}
	abs, _, e := p.resolve(dirfd, name)
	if e != 0 {
		return fail(e)
	}
	if _, e := p.lookup(abs); e == 0 {
		return fail(unix.EEXIST)
	} else if e != unix.ENOENT {
		return fail(e)
	}
	dir, base, e := p.lookupParent(abs)
	if e != 0 {
		return fail(e)
	}
	_, e = p.tmpCreate(dir, base, true, uint32(mode)&0o7777)
	return okOrFail(e)
}

func sysUnlink(p *Process, a [6]uint64) Result {
	return p.unlinkat(unix.AT_FDCWD, a[0], 0)
}

func sysRmdir(p *Process, a [6]uint64) Result {
	return p.unlinkat(unix.AT_FDCWD, a[0], unix.AT_REMOVEDIR)
}

func sysUnlinkat(p *Process, a [6]uint64) Result {
	if a[2]&^unix.AT_REMOVEDIR != 0 {
		return fail(unix.EINVAL)
	}
	return p.unlinkat(fdArg(a[0]), a[1], a[2])
}

func (p *Process) unlinkat(dirfd int32, pathAddr, flags uint64) Result {
	name, e := p.str(pathAddr, pathMax)
	if e != 0 {
		return fail(e)
	}
	abs, mustDir, e := p.resolve(dirfd, name)
	if e != 0 {
		return fail(e)
	}
	n, e := p.lookup(abs)
	rmdir := flags&unix.AT_REMOVEDIR != 0
	switch {
	case e != 0:
		return fail(e)
	case abs == "/" || abs == "/tmp" || abs == "/app" || abs == "/dev":
		return fail(unix.EBUSY) // mount points
	case rmdir && !n.isDir(), !rmdir && mustDir && !n.isDir():
		return fail(unix.ENOTDIR)
	case !rmdir && n.isDir():
		return fail(unix.EISDIR)
	case n.kind == kApp || n.kind == kAppDir:
		return fail(unix.EROFS)
	case n.kind != kTmp:
		return fail(unix.EACCES)
	case rmdir && len(n.tmp.kids) > 0:
		return fail(unix.ENOTEMPTY)
	}
	p.tmpUnlink(n.tmp.parent, lastElem(abs))
	return ok(0)
}

func lastElem(abs string) string {
	for i := len(abs) - 1; i >= 0; i-- {
		if abs[i] == '/' {
			return abs[i+1:]
		}
	}
	return abs
}

func sysRename(p *Process, a [6]uint64) Result {
	return p.renameat(unix.AT_FDCWD, a[0], unix.AT_FDCWD, a[1], 0)
}

func sysRenameat(p *Process, a [6]uint64) Result {
	return p.renameat(fdArg(a[0]), a[1], fdArg(a[2]), a[3], 0)
}

func sysRenameat2(p *Process, a [6]uint64) Result {
	// RENAME_EXCHANGE and RENAME_WHITEOUT are not served: EINVAL, as a
	// file system without them answers.
	if a[4]&^unix.RENAME_NOREPLACE != 0 {
		return fail(unix.EINVAL)
	}
	return p.renameat(fdArg(a[0]), a[1], fdArg(a[2]), a[3], a[4])
}

func (p *Process) renameat(ofd int32, oldAddr uint64, nfd int32, newAddr uint64, flags uint64) Result {
	oldName, e := p.str(oldAddr, pathMax)
	if e != 0 {
		return fail(e)
	}
	newName, e := p.str(newAddr, pathMax)
	if e != 0 {
		return fail(e)
	}
	oldAbs, _, e := p.resolve(ofd, oldName)
	if e != 0 {
		return fail(e)
	}
	newAbs, _, e := p.resolve(nfd, newName)
	if e != 0 {
		return fail(e)
	}
	src, e := p.lookup(oldAbs)
	if e != 0 {
		return fail(e)
	}
	if src.kind != kTmp || oldAbs == "/tmp" {
		switch {
		case oldAbs == "/" || oldAbs == "/tmp" || oldAbs == "/app" || oldAbs == "/dev":
			return fail(unix.EBUSY)
		case src.kind == kApp || src.kind == kAppDir:
			return fail(unix.EROFS)
		}
		return fail(unix.EACCES)
	}
	if newAbs == "/" || newAbs == "/tmp" || newAbs == "/app" || newAbs == "/dev" {
		return fail(unix.EBUSY)
	}
	dir, base, e := p.lookupParent(newAbs)
	switch {
	case e == unix.EROFS || e == unix.EACCES:
		return fail(unix.EXDEV) // another file system
	case e != 0:
		return fail(e)
	}
	if src.tmp.dir && isAncestor(src.tmp, dir) {
		return fail(unix.EINVAL)
	}
	if dst := dir.kids[base]; dst != nil {
		switch {
		case dst == src.tmp:
			return ok(0)
		case flags&unix.RENAME_NOREPLACE != 0:
			return fail(unix.EEXIST)
		case src.tmp.dir && !dst.dir:
			return fail(unix.ENOTDIR)
		case !src.tmp.dir && dst.dir:
			return fail(unix.EISDIR)
		case dst.dir && len(dst.kids) > 0:
			return fail(unix.ENOTEMPTY)
		}
		p.tmpUnlink(dir, base)
	}
	old := src.tmp.parent
	delete(old.kids, lastElem(oldAbs))
	dir.kids[base] = src.tmp
	src.tmp.parent = dir
	if src.tmp.dir {
		old.nlink--
		dir.nlink++
	}
	old.mtime, dir.mtime = p.now(), p.now()
	return ok(0)
}

func sysFtruncate(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	if int64(a[1]) < 0 || f.n.kind != kTmp || f.n.tmp.dir || !canWrite(f) {
		return fail(unix.EINVAL)
	}
	return okOrFail(p.truncate(f.n.tmp, int64(a[1])))
}

func sysTruncate(p *Process, a [6]uint64) Result {
	_, n, e := p.statPath(unix.AT_FDCWD, a[0], 0, 0)
	switch {
	case e != 0:
		return fail(e)
	case n.isDir():
		return fail(unix.EISDIR)
	case int64(a[1]) < 0:
		return fail(unix.EINVAL)
	case n.kind == kApp:
		return fail(unix.EROFS)
	case n.kind != kTmp:
		return fail(unix.EACCES)
	}
	return okOrFail(p.truncate(n.tmp, int64(a[1])))
}

func (p *Process) truncate(t *tmpNode, size int64) unix.Errno {
	if size > tmpMaxBytes {
		return unix.EFBIG
	}
	return p.tmpResize(t, size)
}

func sysFsync(p *Process, a [6]uint64) Result {
	_, e := p.file(fdArg(a[0]))
	return okOrFail(e)
}

func sysFadvise(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	switch {
	case e != 0:
		return fail(e)
	case !seekable(f):
		return fail(unix.ESPIPE)
	case a[3] > unix.FADV_NOREUSE:
		return fail(unix.EINVAL)
	}
	return ok(0)
}

func sysUmask(p *Process, a [6]uint64) Result {
	old := p.st.umask
	p.st.umask = uint32(a[0]) & 0o777
	return ok(uint64(old))
}

func sysChmod(p *Process, a [6]uint64) Result {
	return p.fchmodat(unix.AT_FDCWD, a[0], a[1], 0)
}

func sysFchmodat(p *Process, a [6]uint64) Result {
	return p.fchmodat(fdArg(a[0]), a[1], a[2], 0)
}

func sysFchmod(p *Process, a [6]uint64) Result {
	f, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	return p.chmod(f.n, a[1])
}

func (p *Process) fchmodat(dirfd int32, pathAddr, mode, flags uint64) Result {
	_, n, e := p.statPath(dirfd, pathAddr, flags, 0)
	if e != 0 {
		return fail(e)
	}
	return p.chmod(n, mode)
}

func (p *Process) chmod(n node, mode uint64) Result {
	switch n.kind {
	case kTmp:
		if n.tmp == p.st.tmp.root {
			return fail(unix.EPERM)
		}
		n.tmp.mode = uint32(mode) & 0o7777
		return ok(0)
	case kApp, kAppDir:
		return fail(unix.EROFS)
	}
	return fail(unix.EPERM)
}

// utimensat: times are not kept per call, so only whether the file exists
// and may be touched is answered.
func sysUtimensat(p *Process, a [6]uint64) Result {
	if a[1] == 0 {
		f, e := p.file(fdArg(a[0]))
		if e != 0 {
			return fail(e)
		}
		return p.touch(f.n, a[2])
	}
	_, n, e := p.statPath(fdArg(a[0]), a[1], a[3], unix.AT_SYMLINK_NOFOLLOW|unix.AT_EMPTY_PATH)
	if e != 0 {
		return fail(e)
	}
	return p.touch(n, a[2])
}

func (p *Process) touch(n node, times uint64) Result {
	if times != 0 {
		if _, e := p.rmem(times, 32); e != 0 {
			return fail(e)
		}
	}
	switch n.kind {
	case kTmp:
		n.tmp.mtime = p.now()
		return ok(0)
	case kApp, kAppDir:
		return fail(unix.EROFS)
	}
	return fail(unix.EPERM)
}

func sysPipe(p *Process, a [6]uint64) Result { return p.pipe2(a[0], 0) }

func sysPipe2(p *Process, a [6]uint64) Result { return p.pipe2(a[0], a[1]) }

func (p *Process) pipe2(addr, flags uint64) Result {
	if flags&^uint64(unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_DIRECT) != 0 {
		return fail(unix.EINVAL)
	}
	if _, e := p.wmem(addr, 8); e != 0 {
		return fail(e)
	}
	// Both ends are counted: a pipe is two open objects.
	if p.live(func(f *ofile) bool { return f.pipe != nil }) >= 2*maxPipes {
		return fail(unix.EMFILE)
	}
	q := &pipe{readers: 1, writers: 1}
	status := int(flags) & unix.O_NONBLOCK
	r := p.newOfile(node{kind: kPipe, path: "pipe:"}, unix.O_RDONLY|status)
	w := p.newOfile(node{kind: kPipe, path: "pipe:"}, unix.O_WRONLY|status)
	r.pipe, w.pipe = q, q
	w.ino = r.ino
	cloexec := flags&unix.O_CLOEXEC != 0
	rfd, e := p.install(r, 0, cloexec)
	if e != 0 {
		p.release(w)
		return fail(e)
	}
	wfd, e := p.install(w, 0, cloexec)
	if e != 0 {
		p.closeFD(rfd)
		return fail(e)
	}
	var b [8]byte
	le.PutUint32(b[:], uint32(rfd))
	le.PutUint32(b[4:], uint32(wfd))
	p.put(addr, b[:]) // checked above
	return ok(0)
}

func sysEventfd(p *Process, a [6]uint64) Result { return p.eventfd2(a[0], 0) }

func sysEventfd2(p *Process, a [6]uint64) Result { return p.eventfd2(a[0], a[1]) }

func (p *Process) eventfd2(initval, flags uint64) Result {
	if flags&^uint64(unix.EFD_CLOEXEC|unix.EFD_NONBLOCK|unix.EFD_SEMAPHORE) != 0 {
		return fail(unix.EINVAL)
	}
	f := p.newOfile(node{kind: kEvent, path: "anon_inode:[eventfd]"}, unix.O_RDWR|int(flags)&unix.O_NONBLOCK)
	f.ev = &eventfd{count: uint64(uint32(initval)), semaphore: flags&unix.EFD_SEMAPHORE != 0}
	fd, e := p.install(f, 0, flags&unix.EFD_CLOEXEC != 0)
	if e != 0 {
		return fail(e)
	}
	return ok(uint64(fd))
}

const atStatxSyncType = unix.AT_STATX_FORCE_SYNC | unix.AT_STATX_DONT_SYNC

// ioctl numbers x/sys/unix does not name (asm-generic/ioctls.h).
const (
	fionread = 0x541b
	fionbio  = 0x5421
	fionclex = 0x5450
	fioclex  = 0x5451
)
