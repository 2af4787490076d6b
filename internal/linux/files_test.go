package linux

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestStdio(t *testing.T) {
	e := newEnv(t, "name=dust&x=1")
	b := e.buf(64)
	e.want(4, unix.SYS_READ, 0, b, 4)
	e.want(9, unix.SYS_READ, 0, b+4, 64) // cut at StdinLen
	e.want(0, unix.SYS_READ, 0, b, 64)   // EOF
	if got := string(e.bytes(b, 13)); got != "name=dust&x=1" {
		t.Fatalf("stdin %q", got)
	}
	e.want(5, unix.SYS_WRITE, 1, e.str("hello"), 5)
	e.want(3, unix.SYS_WRITE, 2, e.str("log"), 3)
	if e.stdout.String() != "hello" || e.stderr.String() != "log" {
		t.Fatalf("stdout %q stderr %q", e.stdout.String(), e.stderr.String())
	}
	e.wantErr(unix.EBADF, unix.SYS_WRITE, 0, b, 1)
	e.wantErr(unix.EBADF, unix.SYS_READ, 1, b, 1)
	e.wantErr(unix.EBADF, unix.SYS_READ, 77, b, 1)
	e.wantErr(unix.EBADF, unix.SYS_READ, neg(1), b, 1)
	e.wantErr(unix.ESPIPE, unix.SYS_PREAD64, 0, b, 1, 0)
	e.wantErr(unix.ESPIPE, unix.SYS_PWRITE64, 1, b, 1, 0)
	e.wantErr(unix.ESPIPE, unix.SYS_LSEEK, 1, 0, unix.SEEK_SET)
}

func TestBadPointers(t *testing.T) {
	e := newEnv(t, "body")
	e.p.Deny(tMem-2*pageSize, tMem-pageSize)
	for _, c := range []struct {
		name string
		addr uint64
		n    uint64
	}{
		{"null", 0, 1},
		{"null page end", nullPage - 1, 1},
		{"monitor pages", 0x1000, 16},
		{"past memory", tMem, 1},
		{"far past memory", 1 << 47, 1},
		{"wrapping", ^uint64(0), 2},
		{"denied", tMem - 2*pageSize, 1},
	} {
		for _, nr := range []uint64{unix.SYS_READ, unix.SYS_WRITE} {
			fd := uint64(0)
			if nr == unix.SYS_WRITE {
				fd = 1
			}
			if got := e.ret(nr, fd, c.addr, c.n); got != errno(unix.EFAULT) {
				t.Errorf("%s %s: %s, want EFAULT", sysName(nr), c.name, show(got))
			}
		}
		if got := e.ret(unix.SYS_FSTAT, 0, c.addr); got != errno(unix.EFAULT) {
			t.Errorf("fstat %s: %s", c.name, show(got))
		}
		if got := e.ret(unix.SYS_OPENAT, atFDCWD, c.addr, 0); got != errno(unix.EFAULT) {
			t.Errorf("openat %s: %s", c.name, show(got))
		}
		if got := e.ret(unix.SYS_CLOCK_GETTIME, 0, c.addr); got != errno(unix.EFAULT) {
			t.Errorf("clock_gettime %s: %s", c.name, show(got))
		}
	}
	// Huge lengths are cut to what memory there is: a write from near the
	// top writes up to the end of Mem; a read stops at the denied page.
	top := uint64(tMem - 10)
	copy(e.mem[top:], "0123456789")
	e.want(10, unix.SYS_WRITE, 1, top, 1<<62)
	if e.stdout.String() != "0123456789" {
		t.Fatalf("stdout %q", e.stdout.String())
	}
	e.want(4, unix.SYS_READ, 0, tMem-3*pageSize, ^uint64(0))
	fd := e.open("/dev/zero", unix.O_RDONLY)
	e.want(pageSize, unix.SYS_READ, fd, tMem-3*pageSize, ^uint64(0))
	if e.mem[tMem-2*pageSize] != 0 {
		t.Fatal("wrote into the denied page")
	}
	// A path without a NUL within PATH_MAX.
	long := e.buf(pathMax + 10)
	fill(e.bytes(long, pathMax+10), 'a')
	e.wantErr(unix.ENAMETOOLONG, unix.SYS_OPENAT, atFDCWD, long, 0)
	// A string running into the end of memory.
	copy(e.mem[tMem-3:], "abc")
	e.wantErr(unix.EFAULT, unix.SYS_OPENAT, atFDCWD, tMem-3, 0)
	e.wantErr(unix.ENAMETOOLONG, unix.SYS_OPENAT, atFDCWD, e.str("/tmp/"+strings.Repeat("x", 256)), 0)

	ro := newEnv(t, "")
	ro.p.ReadOnly(0x80000, 0x81000)
	ro.want(0, unix.SYS_WRITE, 1, 0x80000, 0) // zero length: no access
	copy(ro.mem[0x80000:], "text")
	ro.want(4, unix.SYS_WRITE, 1, 0x80000, 4) // readable
	zfd := ro.open("/dev/zero", unix.O_RDONLY)
	ro.wantErr(unix.EFAULT, unix.SYS_READ, zfd, 0x80000, 4)
	ro.want(0x800, unix.SYS_READ, zfd, 0x7f800, 0x1000) // up to the read-only page
	if ro.mem[0x80000] != 't' {
		t.Fatal("read wrote into a read-only page")
	}
}

func TestIovec(t *testing.T) {
	e := newEnv(t, "abcdefgh")
	iov := e.buf(3 * 16)
	a, b := e.str("hello, "), e.str("world")
	le.PutUint64(e.mem[iov:], a)
	le.PutUint64(e.mem[iov+8:], 7)
	le.PutUint64(e.mem[iov+16:], 0) // empty: any base
	le.PutUint64(e.mem[iov+24:], 0)
	le.PutUint64(e.mem[iov+32:], b)
	le.PutUint64(e.mem[iov+40:], 5)
	e.want(12, unix.SYS_WRITEV, 1, iov, 3)
	if e.stdout.String() != "hello, world" {
		t.Fatalf("writev %q", e.stdout.String())
	}
	e.want(0, unix.SYS_WRITEV, 1, iov, 0)
	e.wantErr(unix.EINVAL, unix.SYS_WRITEV, 1, iov, maxIOV+1)
	e.wantErr(unix.EINVAL, unix.SYS_WRITEV, 1, iov, ^uint64(0))
	e.wantErr(unix.EFAULT, unix.SYS_WRITEV, 1, tMem-8, 1)
	le.PutUint64(e.mem[iov+40:], 1<<63) // negative ssize_t
	e.wantErr(unix.EINVAL, unix.SYS_WRITEV, 1, iov, 3)
	le.PutUint64(e.mem[iov+40:], 5)
	le.PutUint64(e.mem[iov+32:], tMem-2) // runs off memory
	e.wantErr(unix.EFAULT, unix.SYS_WRITEV, 1, iov, 3)
	// readv scatters, stopping at a short read.
	x, y := e.buf(3), e.buf(16)
	le.PutUint64(e.mem[iov:], x)
	le.PutUint64(e.mem[iov+8:], 3)
	le.PutUint64(e.mem[iov+16:], y)
	le.PutUint64(e.mem[iov+24:], 16)
	e.want(8, unix.SYS_READV, 0, iov, 2)
	if string(e.bytes(x, 3))+string(e.bytes(y, 5)) != "abcdefgh" {
		t.Fatal("readv bytes")
	}
}

func TestAppFiles(t *testing.T) {
	e := newEnv(t, "")
	fd := e.open("/app/index.lua", unix.O_RDONLY)
	b := e.buf(64)
	e.want(15, unix.SYS_READ, fd, b, 64)
	if string(e.bytes(b, 15)) != "print('hello')\n" {
		t.Fatalf("read %q", e.bytes(b, 15))
	}
	e.want(0, unix.SYS_READ, fd, b, 64)
	e.want(5, unix.SYS_PREAD64, fd, b, 5, 6)
	if string(e.bytes(b, 5)) != "'hell" {
		t.Fatal("pread")
	}
	e.wantErr(unix.EINVAL, unix.SYS_PREAD64, fd, b, 5, neg(1))
	e.want(2, unix.SYS_LSEEK, fd, 2, unix.SEEK_SET)
	e.want(4, unix.SYS_LSEEK, fd, 2, unix.SEEK_CUR)
	e.want(14, unix.SYS_LSEEK, fd, neg(1), unix.SEEK_END)
	e.wantErr(unix.EINVAL, unix.SYS_LSEEK, fd, neg(100), unix.SEEK_SET)
	e.wantErr(unix.EINVAL, unix.SYS_LSEEK, fd, 0, 9)
	e.wantErr(unix.ENXIO, unix.SYS_LSEEK, fd, 20, unix.SEEK_DATA)
	e.wantErr(unix.EBADF, unix.SYS_WRITE, fd, b, 1)
	st := e.buf(144)
	e.want(0, unix.SYS_FSTAT, fd, st)
	if mode, size := le.Uint32(e.mem[st+24:]), le.Uint64(e.mem[st+48:]); mode != unix.S_IFREG|0o444 || size != 15 {
		t.Fatalf("fstat mode %o size %d", mode, size)
	}
	if mtime := le.Uint64(e.mem[st+88:]); mtime != 1700000000 {
		t.Fatalf("mtime %d", mtime)
	}
	e.want(0, unix.SYS_CLOSE, fd)
	e.wantErr(unix.EBADF, unix.SYS_CLOSE, fd)

	for _, c := range []struct {
		path  string
		flags uint64
		err   unix.Errno
	}{
		{"/app/index.lua", unix.O_WRONLY, unix.EROFS},
		{"/app/index.lua", unix.O_RDWR, unix.EROFS},
		{"/app/index.lua", unix.O_RDONLY | unix.O_TRUNC, unix.EROFS},
		{"/app/new", unix.O_WRONLY | unix.O_CREAT, unix.EROFS},
		{"/app/static", unix.O_WRONLY, unix.EISDIR},
		{"/app/index.lua", unix.O_RDONLY | unix.O_DIRECTORY, unix.ENOTDIR},
		{"/app/index.lua/", unix.O_RDONLY, unix.ENOTDIR},
		{"/app/index.lua", unix.O_RDONLY | unix.O_CREAT | unix.O_EXCL, unix.EEXIST},
		{"/app/missing", unix.O_RDONLY, unix.ENOENT},
		{"/app/index.lua", unix.O_ACCMODE, unix.EINVAL},
		{"", unix.O_RDONLY, unix.ENOENT},
		{"/etc/passwd", unix.O_RDONLY, unix.ENOENT},
		{"/tmp/../../etc/passwd", unix.O_RDONLY, unix.ENOENT},
		{"/app/../../../../etc/passwd", unix.O_RDONLY, unix.ENOENT},
		{"../../../../proc/self/maps", unix.O_RDONLY, unix.ENOENT},
		{"/proc/self/cgroup", unix.O_RDONLY, unix.ENOENT},
		{"/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", unix.O_RDONLY, unix.ENOENT},
		{"/newfile", unix.O_WRONLY | unix.O_CREAT, unix.EACCES},
		{"/dev/newdev", unix.O_WRONLY | unix.O_CREAT, unix.EACCES},
		{"/", unix.O_RDWR, unix.EISDIR},
	} {
		if got := e.ret(unix.SYS_OPENAT, atFDCWD, e.str(c.path), c.flags, 0o644); got != errno(c.err) {
			t.Errorf("open(%q, %#x) = %s, want %s", c.path, c.flags, show(got), show(errno(c.err)))
		}
	}
	// `..` is clamped at / and lands inside the tree.
	fd = e.open("/../../app/static/../index.lua", unix.O_RDONLY)
	e.want(15, unix.SYS_READ, fd, b, 64)
	// Relative to a directory fd.
	dir := e.open("/app/static", unix.O_RDONLY|unix.O_DIRECTORY)
	e.want(dir+1, unix.SYS_OPENAT, dir, e.str("a.txt"), unix.O_RDONLY)
	e.wantErr(unix.ENOTDIR, unix.SYS_OPENAT, fd, e.str("a.txt"), unix.O_RDONLY)
	e.wantErr(unix.EBADF, unix.SYS_OPENAT, 99, e.str("a.txt"), unix.O_RDONLY)
	e.wantErr(unix.EISDIR, unix.SYS_READ, dir, b, 1)
	// Without Files there is no /app.
	none := newEnv(t, "")
	none.p.cfg.Files = nil
	none.wantErr(unix.ENOENT, unix.SYS_OPENAT, atFDCWD, none.str("/app"), unix.O_RDONLY)
}

func TestDevices(t *testing.T) {
	e := newEnv(t, "")
	b := e.buf(16)
	null := e.open("/dev/null", unix.O_RDWR)
	e.want(0, unix.SYS_READ, null, b, 16)
	e.want(16, unix.SYS_WRITE, null, b, 16)
	zero := e.open("/dev/zero", unix.O_RDONLY)
	fill(e.bytes(b, 16), 1)
	e.want(16, unix.SYS_READ, zero, b, 16)
	if !allZero(e.bytes(b, 16)) {
		t.Fatal("/dev/zero")
	}
	for _, name := range []string{"/dev/urandom", "/dev/random"} {
		fd := e.open(name, unix.O_RDONLY)
		e.want(16, unix.SYS_READ, fd, b, 16)
		if allZero(e.bytes(b, 16)) {
			t.Fatalf("%s gave zeros", name)
		}
	}
	st := e.buf(144)
	e.want(0, unix.SYS_FSTAT, null, st)
	if mode, rdev := le.Uint32(e.mem[st+24:]), le.Uint64(e.mem[st+40:]); mode != unix.S_IFCHR|0o666 || rdev != mkdev(1, 3) {
		t.Fatalf("/dev/null mode %o rdev %#x", mode, rdev)
	}
	e.want(0, unix.SYS_LSEEK, null, 100, unix.SEEK_SET)
}

// dirNames lists what getdents64 returns for fd in a buffer of size n.
func (e *env) dirNames(fd, n uint64) []string {
	e.t.Helper()
	b := e.buf(n)
	var names []string
	for {
		got := e.ret(unix.SYS_GETDENTS64, fd, b, n)
		if got == 0 {
			return names
		}
		if got > n {
			e.t.Fatalf("getdents64: %s", show(got))
		}
		for off := uint64(0); off < got; {
			reclen := uint64(le.Uint16(e.mem[b+off+16:]))
			name := e.mem[b+off+19 : b+off+reclen]
			names = append(names, string(name[:bytes.IndexByte(name, 0)]))
			off += reclen
		}
	}
}

func TestGetdents(t *testing.T) {
	e := newEnv(t, "")
	root := e.open("/", unix.O_RDONLY|unix.O_DIRECTORY)
	if got := strings.Join(e.dirNames(root, 4096), " "); got != ". .. app dev tmp" {
		t.Fatalf("/ lists %q", got)
	}
	dev := e.open("/dev", unix.O_RDONLY)
	if got := strings.Join(e.dirNames(dev, 32), " "); got != ". .. null zero random urandom" {
		t.Fatalf("/dev lists %q (one entry per call)", got)
	}
	app := e.open("/app/static", unix.O_RDONLY)
	if got := strings.Join(e.dirNames(app, 4096), " "); got != ". .. a.txt b.txt deep" {
		t.Fatalf("/app/static lists %q", got)
	}
	e.want(0, unix.SYS_LSEEK, app, 0, unix.SEEK_SET)
	e.wantErr(unix.EINVAL, unix.SYS_GETDENTS64, app, e.buf(16), 16) // too small for one entry
	e.wantErr(unix.EFAULT, unix.SYS_GETDENTS64, app, tMem, 4096)
	f := e.open("/app/index.lua", unix.O_RDONLY)
	e.wantErr(unix.ENOTDIR, unix.SYS_GETDENTS64, f, e.buf(64), 64)
	e.ret(unix.SYS_MKDIR, e.str("/tmp/d"), 0o755)
	e.open("/tmp/f", unix.O_CREAT|unix.O_WRONLY)
	tmp := e.open("/tmp", unix.O_RDONLY)
	if got := strings.Join(e.dirNames(tmp, 4096), " "); got != ". .. d f" {
		t.Fatalf("/tmp lists %q", got)
	}
}

func TestTmp(t *testing.T) {
	e := newEnv(t, "")
	fd := e.open("/tmp/out.txt", unix.O_CREAT|unix.O_RDWR|unix.O_TRUNC, 0o600)
	e.want(11, unix.SYS_WRITE, fd, e.str("hello world"), 11)
	e.want(0, unix.SYS_LSEEK, fd, 0, unix.SEEK_SET)
	b := e.buf(32)
	e.want(11, unix.SYS_READ, fd, b, 32)
	if string(e.bytes(b, 11)) != "hello world" {
		t.Fatal("tmp read back")
	}
	e.want(3, unix.SYS_PWRITE64, fd, e.str("HEL"), 3, 0)
	e.want(11, unix.SYS_LSEEK, fd, 0, unix.SEEK_CUR) // pwrite leaves the offset
	// A sparse write reads back zeros in the hole.
	e.want(1, unix.SYS_PWRITE64, fd, e.str("!"), 1, 20)
	e.want(21, unix.SYS_PREAD64, fd, b, 32, 0)
	if string(e.bytes(b, 21)) != "HELlo world\x00\x00\x00\x00\x00\x00\x00\x00\x00!" {
		t.Fatalf("tmp %q", e.bytes(b, 21))
	}
	st := e.buf(144)
	e.want(0, unix.SYS_NEWFSTATAT, atFDCWD, e.str("/tmp/out.txt"), st, 0)
	if mode, size, u := le.Uint32(e.mem[st+24:]), le.Uint64(e.mem[st+48:]), le.Uint32(e.mem[st+28:]); mode != unix.S_IFREG|0o600 || size != 21 || u != uid {
		t.Fatalf("stat mode %o size %d uid %d", mode, size, u)
	}
	e.want(0, unix.SYS_FTRUNCATE, fd, 5)
	e.want(0, unix.SYS_NEWFSTATAT, fd, e.str(""), st, unix.AT_EMPTY_PATH)
	if size := le.Uint64(e.mem[st+48:]); size != 5 {
		t.Fatalf("size after ftruncate %d", size)
	}
	e.wantErr(unix.ENOENT, unix.SYS_NEWFSTATAT, fd, e.str(""), st, 0)
	e.wantErr(unix.EINVAL, unix.SYS_NEWFSTATAT, fd, e.str(""), st, 0x8000000)
	// O_APPEND writes at the end.
	afd := e.open("/tmp/out.txt", unix.O_WRONLY|unix.O_APPEND)
	e.want(2, unix.SYS_WRITE, afd, e.str("!!"), 2)
	e.want(7, unix.SYS_PREAD64, fd, b, 32, 0)
	if string(e.bytes(b, 7)) != "HELlo!!" {
		t.Fatalf("append %q", e.bytes(b, 7))
	}
	// Directories, rename, unlink.
	e.want(0, unix.SYS_MKDIR, e.str("/tmp/d"), 0o755)
	e.wantErr(unix.EEXIST, unix.SYS_MKDIR, e.str("/tmp/d"), 0o755)
	e.wantErr(unix.ENOENT, unix.SYS_MKDIR, e.str("/tmp/x/y"), 0o755)
	e.wantErr(unix.EROFS, unix.SYS_MKDIR, e.str("/app/d"), 0o755)
	e.wantErr(unix.EACCES, unix.SYS_MKDIR, e.str("/d"), 0o755)
	e.want(0, unix.SYS_RENAME, e.str("/tmp/out.txt"), e.str("/tmp/d/moved"))
	e.wantErr(unix.ENOENT, unix.SYS_OPENAT, atFDCWD, e.str("/tmp/out.txt"), unix.O_RDONLY)
	e.want(7, unix.SYS_PREAD64, fd, b, 32, 0) // still open
	e.wantErr(unix.ENOTEMPTY, unix.SYS_RMDIR, e.str("/tmp/d"))
	e.wantErr(unix.EINVAL, unix.SYS_RENAME, e.str("/tmp/d"), e.str("/tmp/d/sub"))
	e.wantErr(unix.EXDEV, unix.SYS_RENAME, e.str("/tmp/d/moved"), e.str("/app/x"))
	e.wantErr(unix.EROFS, unix.SYS_RENAME, e.str("/app/index.lua"), e.str("/tmp/x"))
	e.wantErr(unix.EISDIR, unix.SYS_UNLINK, e.str("/tmp/d"))
	e.wantErr(unix.EROFS, unix.SYS_UNLINK, e.str("/app/index.lua"))
	e.wantErr(unix.EBUSY, unix.SYS_RMDIR, e.str("/tmp"))
	e.wantErr(unix.EACCES, unix.SYS_UNLINK, e.str("/dev/null"))
	e.want(0, unix.SYS_UNLINKAT, atFDCWD, e.str("/tmp/d/moved"), 0)
	e.want(0, unix.SYS_UNLINKAT, atFDCWD, e.str("/tmp/d"), unix.AT_REMOVEDIR)
	e.want(7, unix.SYS_PREAD64, fd, b, 32, 0) // unlinked, open: still readable
	e.want(0, unix.SYS_CLOSE, fd)
	e.want(0, unix.SYS_CLOSE, afd)
	if e.p.st.tmp.bytes != 0 || e.p.st.tmp.files != 0 {
		t.Fatalf("tmp holds %d bytes in %d files after everything was removed", e.p.st.tmp.bytes, e.p.st.tmp.files)
	}
	// cwd.
	e.want(0, unix.SYS_MKDIR, e.str("/tmp/w"), 0o755)
	e.want(0, unix.SYS_CHDIR, e.str("/tmp/w"))
	e.open("rel", unix.O_CREAT|unix.O_WRONLY)
	e.want(0, unix.SYS_ACCESS, e.str("/tmp/w/rel"), unix.R_OK|unix.W_OK)
	cwd := e.buf(64)
	e.want(7, unix.SYS_GETCWD, cwd, 64)
	if string(e.bytes(cwd, 7)) != "/tmp/w\x00" {
		t.Fatalf("getcwd %q", e.bytes(cwd, 7))
	}
	e.wantErr(unix.ERANGE, unix.SYS_GETCWD, cwd, 3)
	e.want(0, unix.SYS_CHDIR, e.str("../../.."))
	e.want(2, unix.SYS_GETCWD, cwd, 64)
	e.wantErr(unix.ENOTDIR, unix.SYS_CHDIR, e.str("/app/index.lua"))
	e.wantErr(unix.ENOENT, unix.SYS_CHDIR, e.str("/nope"))
}

func TestTmpBombs(t *testing.T) {
	e := newEnv(t, "")
	// Files: the count is bounded.
	for i := 0; ; i++ {
		r := e.ret(unix.SYS_MKDIRAT, atFDCWD, e.str("/tmp/"+strings.Repeat("d", 1+i%200)+string(rune('a'+i/200))), 0o755)
		if r == errno(unix.ENOSPC) {
			if i != tmpMaxFiles {
				t.Fatalf("ENOSPC after %d directories, want %d", i, tmpMaxFiles)
			}
			break
		}
		if r != 0 || i > tmpMaxFiles {
			t.Fatalf("mkdir %d: %s", i, show(r))
		}
	}
	e.wantErr(unix.ENOSPC, unix.SYS_OPENAT, atFDCWD, e.str("/tmp/one-more"), unix.O_CREAT|unix.O_WRONLY, 0o644)

	// Bytes: a write that does not fit is cut, then ENOSPC.
	e = newEnv(t, "")
	fd := e.open("/tmp/big", unix.O_CREAT|unix.O_WRONLY)
	chunk := uint64(1 << 20)
	src := e.buf(0)
	_ = src
	var total uint64
	for {
		r := e.ret(unix.SYS_WRITE, fd, tHeapStart, chunk) // any readable megabyte
		if r == errno(unix.ENOSPC) {
			break
		}
		if r > chunk {
			t.Fatalf("write: %s", show(r))
		}
		total += r
	}
	if total != tmpMaxBytes {
		t.Fatalf("wrote %d bytes into /tmp, want %d", total, tmpMaxBytes)
	}
	e.wantErr(unix.ENOSPC, unix.SYS_PWRITE64, fd, tHeapStart, 1, 0x7fffffff)
	e.wantErr(unix.EFBIG, unix.SYS_FTRUNCATE, fd, 1<<40)
	fd2 := e.open("/tmp/small", unix.O_CREAT|unix.O_WRONLY)
	e.wantErr(unix.ENOSPC, unix.SYS_WRITE, fd2, tHeapStart, 1)
	// Freed by unlink + close.
	e.want(0, unix.SYS_UNLINK, e.str("/tmp/big"))
	e.wantErr(unix.ENOSPC, unix.SYS_WRITE, fd2, tHeapStart, 1) // still open
	e.want(0, unix.SYS_CLOSE, fd)
	e.want(1, unix.SYS_WRITE, fd2, tHeapStart, 1)
}

func TestFdCalls(t *testing.T) {
	e := newEnv(t, "")
	fd := e.open("/app/index.lua", unix.O_RDONLY|unix.O_CLOEXEC)
	e.want(unix.FD_CLOEXEC, unix.SYS_FCNTL, fd, unix.F_GETFD)
	e.want(0, unix.SYS_FCNTL, fd, unix.F_SETFD, 0)
	e.want(0, unix.SYS_FCNTL, fd, unix.F_GETFD)
	e.want(oLargefile|unix.O_RDONLY, unix.SYS_FCNTL, fd, unix.F_GETFL)
	e.want(0, unix.SYS_FCNTL, fd, unix.F_SETFL, unix.O_NONBLOCK|unix.O_RDWR)
	e.want(oLargefile|unix.O_NONBLOCK, unix.SYS_FCNTL, fd, unix.F_GETFL) // access mode unchanged
	e.want(10, unix.SYS_FCNTL, fd, unix.F_DUPFD, 10)
	e.want(unix.FD_CLOEXEC, unix.SYS_FCNTL, e.ret(unix.SYS_FCNTL, fd, unix.F_DUPFD_CLOEXEC, 0), unix.F_GETFD)
	e.wantErr(unix.EINVAL, unix.SYS_FCNTL, fd, unix.F_DUPFD, maxFDs)
	e.wantErr(unix.EINVAL, unix.SYS_FCNTL, fd, 9999)
	e.wantErr(unix.EBADF, unix.SYS_FCNTL, 500, unix.F_GETFD)
	// dup shares the offset.
	b := e.buf(8)
	d := e.ret(unix.SYS_DUP, fd)
	e.want(3, unix.SYS_READ, fd, b, 3)
	e.want(3, unix.SYS_LSEEK, d, 0, unix.SEEK_CUR)
	e.want(50, unix.SYS_DUP2, fd, 50)
	e.want(50, unix.SYS_DUP2, 50, 50)
	e.wantErr(unix.EBADF, unix.SYS_DUP2, 49, 49)
	e.wantErr(unix.EINVAL, unix.SYS_DUP3, 50, 50, 0)
	e.wantErr(unix.EINVAL, unix.SYS_DUP3, fd, 51, 1)
	e.wantErr(unix.EBADF, unix.SYS_DUP3, fd, maxFDs, 0)
	e.want(1, unix.SYS_DUP2, fd, 1) // replaces stdout
	e.wantErr(unix.EBADF, unix.SYS_WRITE, 1, b, 1)
	// ioctl: no terminals.
	e.wantErr(unix.ENOTTY, unix.SYS_IOCTL, 0, unix.TCGETS, b)
	e.wantErr(unix.ENOTTY, unix.SYS_IOCTL, 2, unix.TIOCGWINSZ, b)
	e.wantErr(unix.EBADF, unix.SYS_IOCTL, 99, unix.TCGETS, b)
	// The descriptor limit.
	for i := 0; i < maxFDs; i++ {
		if r := e.ret(unix.SYS_DUP, 0); r == errno(unix.EMFILE) {
			break
		} else if r >= maxFDs {
			t.Fatalf("dup gave %d", r)
		}
	}
	e.wantErr(unix.EMFILE, unix.SYS_OPENAT, atFDCWD, e.str("/dev/null"), 0)
	if e.p.st.tmp.files != 0 {
		t.Fatal("a failed open left a file")
	}
	e.p.Close()
	if len(e.p.st.fds) != 0 {
		t.Fatal("Close left descriptors")
	}
}

func TestAccessReadlinkStatx(t *testing.T) {
	e := newEnv(t, "")
	e.want(0, unix.SYS_ACCESS, e.str("/app/index.lua"), unix.R_OK)
	e.wantErr(unix.EROFS, unix.SYS_ACCESS, e.str("/app/index.lua"), unix.W_OK)
	e.wantErr(unix.EACCES, unix.SYS_ACCESS, e.str("/app/index.lua"), unix.X_OK)
	e.want(0, unix.SYS_FACCESSAT, atFDCWD, e.str("/app/static/b.txt"), unix.X_OK)
	e.wantErr(unix.EACCES, unix.SYS_FACCESSAT2, atFDCWD, e.str("/"), unix.W_OK, 0)
	e.want(0, unix.SYS_FACCESSAT2, atFDCWD, e.str("/dev/null"), unix.W_OK, unix.AT_EACCESS)
	e.wantErr(unix.EINVAL, unix.SYS_FACCESSAT2, atFDCWD, e.str("/dev/null"), 8, 0)
	e.wantErr(unix.ENOENT, unix.SYS_ACCESS, e.str("/bin/sh"), 0)
	e.wantErr(unix.EINVAL, unix.SYS_READLINK, e.str("/app/index.lua"), e.buf(64), 64)
	e.wantErr(unix.ENOENT, unix.SYS_READLINK, e.str("/proc/self/exe"), e.buf(64), 64)
	e.wantErr(unix.EINVAL, unix.SYS_READLINKAT, atFDCWD, e.str("/app"), e.buf(64), 0)
	sx := e.buf(256)
	e.want(0, unix.SYS_STATX, atFDCWD, e.str("/app/index.lua"), 0, unix.STATX_BASIC_STATS, sx)
	if mask, mode, size := le.Uint32(e.mem[sx:]), le.Uint16(e.mem[sx+28:]), le.Uint64(e.mem[sx+40:]); mask != unix.STATX_BASIC_STATS || mode != unix.S_IFREG|0o444 || size != 15 {
		t.Fatalf("statx mask %#x mode %o size %d", mask, mode, size)
	}
	e.wantErr(unix.EINVAL, unix.SYS_STATX, atFDCWD, e.str("/app"), 0x6000, 0, sx)
	e.wantErr(unix.EFAULT, unix.SYS_STATX, atFDCWD, e.str("/app"), 0, 0, tMem-8)
}

func TestPipeEventfd(t *testing.T) {
	e := newEnv(t, "")
	fds := e.buf(8)
	e.want(0, unix.SYS_PIPE2, fds, unix.O_CLOEXEC)
	r, w := uint64(le.Uint32(e.mem[fds:])), uint64(le.Uint32(e.mem[fds+4:]))
	e.want(4, unix.SYS_WRITE, w, e.str("ping"), 4)
	b := e.buf(16)
	e.want(4, unix.SYS_READ, r, b, 16)
	if string(e.bytes(b, 4)) != "ping" {
		t.Fatal("pipe bytes")
	}
	// Blocking on an empty pipe with one thread would never end.
	if res := e.call(unix.SYS_READ, r, b, 16); res.Action != ActionStop || !errors.Is(res.Err, errBlockForever) {
		t.Fatalf("blocking read of an empty pipe: %+v", res)
	}
	e.want(0, unix.SYS_FCNTL, r, unix.F_SETFL, unix.O_NONBLOCK)
	e.wantErr(unix.EAGAIN, unix.SYS_READ, r, b, 16)
	e.wantErr(unix.ESPIPE, unix.SYS_LSEEK, r, 0, 0)
	e.want(0, unix.SYS_CLOSE, w)
	e.want(0, unix.SYS_READ, r, b, 16) // EOF
	e.wantErr(unix.EINVAL, unix.SYS_PIPE2, fds, 0x1)
	e.wantErr(unix.EFAULT, unix.SYS_PIPE2, tMem-4, 0)
	// Writing with no reader: SIGPIPE kills, unless ignored.
	e.want(0, unix.SYS_PIPE2, fds, 0)
	r, w = uint64(le.Uint32(e.mem[fds:])), uint64(le.Uint32(e.mem[fds+4:]))
	e.want(0, unix.SYS_CLOSE, r)
	if res := e.call(unix.SYS_WRITE, w, b, 1); res.Action != ActionExit || res.Status != 128+13 {
		t.Fatalf("SIGPIPE: %+v", res)
	}
	act := e.buf(32)
	le.PutUint64(e.mem[act:], sigIGN)
	e.want(0, unix.SYS_RT_SIGACTION, uint64(unix.SIGPIPE), act, 0, 8)
	e.wantErr(unix.EPIPE, unix.SYS_WRITE, w, b, 1)

	ev := e.ret(unix.SYS_EVENTFD2, 3, unix.EFD_NONBLOCK)
	e.want(8, unix.SYS_READ, ev, b, 8)
	if le.Uint64(e.mem[b:]) != 3 {
		t.Fatal("eventfd count")
	}
	e.wantErr(unix.EAGAIN, unix.SYS_READ, ev, b, 8)
	e.wantErr(unix.EINVAL, unix.SYS_READ, ev, b, 4)
	le.PutUint64(e.mem[b:], 5)
	e.want(8, unix.SYS_WRITE, ev, b, 8)
	le.PutUint64(e.mem[b:], ^uint64(0))
	e.wantErr(unix.EINVAL, unix.SYS_WRITE, ev, b, 8)
	e.wantErr(unix.EINVAL, unix.SYS_EVENTFD2, 0, 0x40)
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("output limit") }

func TestWriterFailureStops(t *testing.T) {
	e := newEnv(t, "")
	e.p.cfg.Stdout = failWriter{}
	r := e.call(unix.SYS_WRITE, 1, e.str("x"), 1)
	if r.Action != ActionStop || r.Err == nil || !strings.Contains(r.Err.Error(), "output limit") {
		t.Fatalf("write to a failing stdout: %+v", r)
	}
}
