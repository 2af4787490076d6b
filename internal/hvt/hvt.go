// Package hvt is Dust's KVM machine monitor: it boots static x86-64 ELF
// unikernels built on libdust, one brand-new micro-VM per request.
//
// An image is validated and laid out once into a sealed memfd template
// (segments, page tables, GDT, boot info). Each machine maps the template
// copy-on-write into its own VM, so it costs only the pages it writes. The
// guest runs at CPL3 in long mode and talks to the monitor through port-I/O
// hypercalls whose arguments live in guest memory (docs/abi.md).
package hvt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/linux"
	"github.com/dust-run/dust/internal/machine"
)

// Kind is the hvt machine kind.
type Kind struct{}

// Name implements machine.Kind.
func (Kind) Name() string { return "hvt" }

var (
	tscOnce sync.Once
	tscHz   uint64
)

// hostTSCHz asks KVM for the guest TSC frequency once per process. A host
// that cannot say gives 0, and libdust's clocks then stand still rather
// than run at a guessed rate.
func hostTSCHz(sys *kvm.System) uint64 {
	tscOnce.Do(func() {
		if sys.CheckExtension(kvm.KVM_CAP_GET_TSC_KHZ) <= 0 {
			return
		}
		vm, err := sys.CreateVM()
		if err != nil {
			return
		}
		defer unix.Close(vm)
		vcpu, err := kvm.CreateVCPU(vm, 0)
		if err != nil {
			return
		}
		defer unix.Close(vcpu)
		if khz, err := kvm.GetTSCKHz(vcpu); err == nil {
			tscHz = khz * 1000
		}
	})
	return tscHz
}

// Image is a prepared hvt image: a validated ELF laid out in a template.
type Image struct {
	sys    *kvm.System
	limits machine.Limits
	lay    *layout
	elf    *elfImage
	memfd  int

	warmOn bool
	tsize  uintptr
	sregs  kvm.Sregs
	regs   kvm.Regs
	cpuid  []byte
	hwcap  uint64 // a Linux program's AT_HWCAP

	// view maps the sealed template read-only: what a restore copies
	// back. state is the vCPU state a restore reloads (nil with stateErr
	// when KVM lacks what restoring needs), captured from the first vCPU
	// made, before it ever ran.
	view      []byte
	viewPtr   unsafe.Pointer
	stateOnce sync.Once
	state     *vcpuState
	stateErr  error
	// snapshotted: the template is the program's state at its ready
	// point (snapshot.go), not at boot.
	snapshotted bool
	// A snapshotted Linux program's process at its ready point, which
	// every request's process is a copy of, and its threads' registers:
	// the running one's are in regs, the others' in threads.
	proc    *linux.Process
	tid     int
	threads map[int]*savedThread
	// files are a Linux program's /app (Options.Files).
	files fs.FS
	// server: a server app's start-up (Options.Server), nil for CGI.
	// serverLate: its snapshot is at the first read of an accepted
	// connection, which each request's copy is given (server.go).
	server       *ServerOptions
	serverLate   bool
	snapshotRuns int
	// vdsoMult is the vDSO's TSC multiplier (vdso.go); 0: no vDSO.
	// tscModel is how this host's guests read the TSC at CPL3, learnt
	// from the image's first machine.
	vdsoMult uint64
	tscOnce  sync.Once
	tscModel tscModel

	mu     sync.RWMutex // Close against restores reading view
	closed bool
}

// Prepare validates elf and builds its memory template (machine.Kind).
func (Kind) Prepare(elf []byte, limits machine.Limits) (machine.Image, error) {
	return Prepare(elf, limits)
}

// Options are what an image carries besides its program and limits.
type Options struct {
	// Files are the app's read-only files, which a Linux program sees
	// under /app (nil: no /app): regular files and directories, at most
	// maxAppBytes and maxAppFiles in all. PrepareWith copies them into
	// memory (appFiles says why); later changes to Files are not seen. A
	// libdust program has no file system and never sees them.
	Files fs.FS
	// Server makes a Linux program a server app (server.go): started once
	// here, snapshotted when it first waits for a connection, and handed
	// one connection per request.
	Server *ServerOptions
}

// Prepare validates elf and builds its memory template.
func Prepare(elf []byte, limits machine.Limits) (*Image, error) {
	return PrepareWith(elf, limits, Options{})
}

// PrepareWith is Prepare for an app that has more than a program (its
// read-only files).
func PrepareWith(elf []byte, limits machine.Limits, opt Options) (*Image, error) {
	limits = limits.WithDefaults()
	if err := limits.Validate(); err != nil {
		return nil, err
	}
	var files fs.FS
	if opt.Files != nil {
		af, err := copyAppFiles(opt.Files)
		if err != nil {
			return nil, err
		}
		files = af
	}
	img, err := parseImage(elf)
	if err != nil {
		return nil, err
	}
	if opt.Server != nil && !img.linux {
		return nil, fmt.Errorf("%w: only a static Linux program can be a server app (this is a libdust program)", machine.ErrBadImage)
	}
	sys, err := kvm.Open()
	if err != nil {
		return nil, err
	}
	cpuid, err := sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	if !cpuidHasNX(cpuid) {
		return nil, errNoNX
	}
	var lay *layout
	sregs := initialSregs()
	if img.linux {
		// Every system call reads and writes the registers through
		// kvm_run's sync area; without it each would cost two ioctls more.
		if sys.CheckExtension(kvm.KVM_CAP_SYNC_REGS)&linuxValidRegs != linuxValidRegs {
			return nil, fmt.Errorf("%w: KVM lacks KVM_CAP_SYNC_REGS, which Linux programs need", machine.ErrBadImage)
		}
		lay, err = buildLinuxLayout(img, uint64(limits.Memory))
		sregs = linuxSregs()
	} else {
		lay, err = buildLayout(img, uint64(limits.Memory), hostTSCHz(sys))
	}
	if err != nil {
		return nil, err
	}
	fd, err := writeTemplate(lay, img)
	if err != nil {
		return nil, err
	}
	im := &Image{
		sys: sys, limits: limits, lay: lay, elf: img, memfd: fd, tsize: uintptr(lay.tsize),
		sregs: sregs, regs: lay.initialRegs(), cpuid: cpuid, files: files, server: opt.Server,
	}
	if img.linux {
		// AT_HWCAP is CPUID leaf 1 EDX, as Linux reports it; the guest
		// sees this CPUID list.
		leaf1, _ := cpuidLeaf(cpuid, 1)
		im.hwcap = uint64(leaf1.EDX)
		im.vdsoMult = vdsoMultFor(hostTSCHz(sys))
	}
	// The memfd holds the bytes now; without these references the Image
	// does not also pin the caller's copy of the ELF file.
	lay.low = nil
	for i := range img.segments {
		img.segments[i].data = nil
	}
	if _, err := im.snapshot(); err != nil {
		im.Close()
		return nil, fmt.Errorf("%w: %w", machine.ErrBadImage, err)
	}
	list, err := im.probe()
	if err == nil {
		err = im.setWarmList(list)
	}
	if err == nil {
		err = sealTemplate(im.memfd)
	}
	if err == nil {
		err = im.mapView()
	}
	if err != nil {
		im.Close()
		return nil, err
	}
	return im, nil
}

// setWarmList stores the warm list in the (not yet sealed) template; every
// machine made from now on runs the warm-up stub.
func (im *Image) setWarmList(list []uint64) error {
	b := make([]byte, 8*(len(list)+1))
	for i, a := range list {
		binary.LittleEndian.PutUint64(b[8*i:], a)
	}
	if _, err := unix.Pwrite(im.memfd, b, warmList); err != nil {
		return fmt.Errorf("hvt: template warm list: %w", err)
	}
	im.warmOn = true
	return nil
}

// writeTemplate stores the template in a memfd (sealed later, after the
// probe): low memory, then each segment's file bytes at its address. Only
// non-zero pages are written, so the template costs what the file provides
// (parseELF refuses segments that load the same file bytes twice) plus a
// few monitor pages; the rest of its span, and all BSS, reads as zero
// without being allocated.
func writeTemplate(l *layout, img *elfImage) (int, error) {
	fd, err := unix.MemfdCreate("dust-hvt-template", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("hvt: memfd_create: %w", err)
	}
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("hvt: template %s: %w", what, err)
	}
	if err := unix.Ftruncate(fd, int64(l.tsize)); err != nil {
		return fail("ftruncate", err)
	}
	write := func(b []byte, at uint64) error {
		// Page by page in guest addresses, so that a segment starting
		// mid-page is cut where the pages are.
		for len(b) > 0 {
			n := min(uint64(len(b)), alignUp(at+1, pageSize)-at)
			if !isZero(b[:n]) {
				if _, err := unix.Pwrite(fd, b[:n], int64(at)); err != nil {
					return err
				}
			}
			b, at = b[n:], at+n
		}
		return nil
	}
	if err := write(l.low, 0); err != nil {
		return fail("write", err)
	}
	for _, s := range img.segments {
		if err := write(s.data, s.vaddr); err != nil {
			return fail("write", err)
		}
	}
	return fd, nil
}

// cpuidHasNX reports whether a kvm_cpuid2 list advertises NX (leaf
// 0x80000001, EDX bit 20), without which KVM refuses EFER.NXE.
func cpuidHasNX(cpuid []byte) bool {
	hdr := int(unsafe.Sizeof(kvm.CPUID2{}))
	if len(cpuid) < hdr {
		return false
	}
	n := (len(cpuid) - hdr) / int(unsafe.Sizeof(kvm.CPUIDEntry2{}))
	for _, e := range unsafe.Slice((*kvm.CPUIDEntry2)(unsafe.Pointer(&cpuid[hdr])), n) {
		if e.Function == 0x80000001 {
			return e.EDX&(1<<20) != 0
		}
	}
	return false
}

var errNoNX = errors.New("hvt: KVM does not offer the NX (no-execute) feature, which the guest's page tables rely on")

// sealTemplate makes the template immutable for the rest of its life.
func sealTemplate(fd int) error {
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		return fmt.Errorf("hvt: sealing the template: %w", err)
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Kind implements machine.Image.
func (im *Image) Kind() string { return "hvt" }

// Limits implements machine.Image.
func (im *Image) Limits() machine.Limits { return im.limits }

// Close releases the template. Machines already created keep their own
// mappings and stay valid.
func (im *Image) Close() error {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.closed {
		return nil
	}
	im.closed = true
	var errs []error
	if im.viewPtr != nil {
		errs = append(errs, unix.MunmapPtr(im.viewPtr, im.tsize))
		im.viewPtr, im.view = nil, nil
	}
	errs = append(errs, unix.Close(im.memfd))
	return errors.Join(errs...)
}

// NewMachine creates a VM with one vCPU, maps the template copy-on-write
// as its memory and sets the entry state. No guest code runs yet.
func (im *Image) NewMachine() (machine.Machine, error) {
	return im.newMachine()
}

func (im *Image) newMachine() (m *Machine, err error) {
	im.mu.RLock()
	if im.closed {
		im.mu.RUnlock()
		return nil, fmt.Errorf("hvt: image closed")
	}
	memfd := im.memfd
	im.mu.RUnlock()

	mm := &Machine{im: im, vmfd: -1, vcpufd: -1}
	m = mm
	defer func() {
		if err != nil {
			mm.Close() // partial set-up: release what was made
		}
	}()
	lap := phaseTimer("create")
	memSize := uintptr(im.lay.memSize)
	// Anonymous private memory reads as shared zero pages until written;
	// NORESERVE because most of it never is.
	p, err := unix.MmapPtr(-1, 0, nil, memSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("hvt: mmap guest memory: %w", err)
	}
	m.memPtr = p
	m.mem = unsafe.Slice((*byte)(p), memSize)
	// 4 KiB pages only: a transparent huge page would make one guest
	// write turn 512 pages private, and every restore compare them all.
	unix.Madvise(m.mem, unix.MADV_NOHUGEPAGE)
	lap("mmap guest memory")
	if _, err := unix.MmapPtr(memfd, 0, p, im.tsize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_FIXED); err != nil {
		return nil, fmt.Errorf("hvt: mmap template: %w", err)
	}
	lap("mmap template")
	if m.vmfd, err = im.sys.CreateVM(); err != nil {
		return nil, err
	}
	lap("KVM_CREATE_VM")
	region := kvm.UserspaceMemoryRegion{Slot: 0, GuestPhysAddr: 0, MemorySize: uint64(memSize), UserspaceAddr: uint64(uintptr(p))}
	if err = kvm.SetUserMemoryRegion(m.vmfd, &region); err != nil {
		return nil, err
	}
	lap("KVM_SET_USER_MEMORY_REGION")
	if m.vcpufd, err = kvm.CreateVCPU(m.vmfd, 0); err != nil {
		return nil, err
	}
	lap("KVM_CREATE_VCPU")
	rp, err := unix.MmapPtr(m.vcpufd, 0, nil, uintptr(im.sys.RunSize()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("hvt: mmap kvm_run: %w", err)
	}
	m.runPtr = rp
	m.runMap = unsafe.Slice((*byte)(rp), im.sys.RunSize())
	m.run = (*kvm.Run)(rp)
	lap("mmap kvm_run")
	// CPUID before SREGS: KVM checks CR4/EFER bits against the guest CPUID.
	if err = kvm.SetCPUID2(m.vcpufd, im.cpuid); err != nil {
		return nil, err
	}
	lap("KVM_SET_CPUID2")
	sregs := im.sregs
	if err = kvm.SetSregs(m.vcpufd, &sregs); err != nil {
		return nil, err
	}
	lap("KVM_SET_SREGS")
	regs := im.regs
	if err = kvm.SetRegs(m.vcpufd, &regs); err != nil {
		return nil, err
	}
	lap("KVM_SET_REGS")
	if im.lay.linux {
		if err = setSyscallMSRs(m.vcpufd); err != nil {
			return nil, err
		}
		*m.run.ValidRegs() = linuxValidRegs
		lap("KVM_SET_MSRS (syscall entry)")
	}
	im.stateOnce.Do(func() {
		if im.stateErr = checkRestoreCaps(im.sys); im.stateErr == nil {
			im.state, im.stateErr = captureState(mm)
		}
	})
	vdso := im.vdsoMult != 0 && im.state != nil && im.state.tscOffset
	var off uint64
	if vdso {
		// The vDSO computes time from the guest TSC: set its offset, so
		// that the monitor knows it (a new vCPU's TSC starts at 0, and so
		// does this one's), then see what the guest reads (vdso.go).
		off = -kvm.HostTSC()
		if err = kvm.SetTSCOffset(mm.vcpufd, off); err != nil {
			return nil, err
		}
		lap("TSC offset (vDSO)")
	}
	if im.snapshotted {
		if err = mm.applySnapshotState(); err != nil {
			return nil, err
		}
		lap("snapshot vCPU state")
	}
	if im.warmOn {
		if err = mm.warm(); err != nil {
			return nil, err
		}
		lap("warm-up run (first KVM_RUN, stub, KVM_SET_REGS)")
	} else if vdso {
		if err = mm.runStub(); err != nil {
			return nil, err
		}
		lap("TSC probe (stub run)")
	}
	if vdso {
		if err = mm.learnTSC(off); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// App files.

// Bounds on an app's read-only files, which every image holds in memory.
const (
	maxAppBytes = 256 << 20
	maxAppFiles = 16384
)

// appFiles is an app's read-only files, copied into memory when the image
// is prepared. A Linux program's file system calls are served on the vCPU
// worker thread, whose seccomp filter (seccomp.go) allows no openat, fstat
// or getdents64: an fs.FS backed by host files would have the filter kill
// the whole process there. Served from memory, /app costs no host system
// call after Prepare, and the files cannot change under a running program
// (which may have mapped one).
type appFiles map[string]*appFile // by fs.ValidPath name; "." is the root

type appFile struct {
	name    string // base name
	mode    fs.FileMode
	mtime   time.Time
	data    []byte
	entries []fs.DirEntry // a directory's, sorted by name
}

// copyAppFiles reads src whole. Anything but regular files and
// directories is refused rather than followed: a symbolic link could point
// outside the app.
func copyAppFiles(src fs.FS) (appFiles, error) {
	af := appFiles{}
	var total int64
	err := fs.WalkDir(src, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if len(af) >= maxAppFiles {
			return fmt.Errorf("more than %d files and directories", maxAppFiles)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		f := &appFile{name: path.Base(name), mode: info.Mode(), mtime: info.ModTime()}
		switch {
		case name == ".":
			f.name, f.mode = ".", fs.ModeDir|0o555
		case d.IsDir():
		case info.Mode().IsRegular():
			if total += info.Size(); total > maxAppBytes {
				return fmt.Errorf("more than %d MiB", maxAppBytes>>20)
			}
			if f.data, err = fs.ReadFile(src, name); err != nil {
				return err
			}
			// The size Stat reports must be the bytes served.
			total += int64(len(f.data)) - info.Size()
		default:
			return fmt.Errorf("%s is a %v, not a regular file or directory", name, info.Mode().Type())
		}
		af[name] = f
		if name != "." {
			parent := af[path.Dir(name)]
			parent.entries = append(parent.entries, fs.FileInfoToDirEntry(f))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: the app's files: %w", machine.ErrBadImage, err)
	}
	return af, nil
}

func (af appFiles) lookup(op, name string) (*appFile, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	f, ok := af[name]
	if !ok {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	return f, nil
}

// Open implements fs.FS; every open file reads the shared bytes through
// its own offset.
func (af appFiles) Open(name string) (fs.File, error) {
	f, err := af.lookup("open", name)
	if err != nil {
		return nil, err
	}
	return &openAppFile{appFile: f, Reader: bytes.NewReader(f.data)}, nil
}

// Stat implements fs.StatFS.
func (af appFiles) Stat(name string) (fs.FileInfo, error) { return af.lookup("stat", name) }

// ReadDir implements fs.ReadDirFS.
func (af appFiles) ReadDir(name string) ([]fs.DirEntry, error) {
	f, err := af.lookup("readdir", name)
	if err != nil {
		return nil, err
	}
	if !f.mode.IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errors.New("not a directory")}
	}
	return slices.Clone(f.entries), nil
}

// appFile is its own fs.FileInfo.
func (f *appFile) Name() string       { return f.name }
func (f *appFile) Size() int64        { return int64(len(f.data)) }
func (f *appFile) Mode() fs.FileMode  { return f.mode }
func (f *appFile) ModTime() time.Time { return f.mtime }
func (f *appFile) IsDir() bool        { return f.mode.IsDir() }
func (f *appFile) Sys() any           { return nil }

type openAppFile struct {
	*appFile
	*bytes.Reader // Read, ReadAt, Seek
	dirPos        int
}

func (o *openAppFile) Stat() (fs.FileInfo, error) { return o.appFile, nil }
func (o *openAppFile) Close() error               { return nil }

// ReadDir implements fs.ReadDirFile, with fs.ReadDirFile's paging.
func (o *openAppFile) ReadDir(n int) ([]fs.DirEntry, error) {
	if !o.mode.IsDir() {
		return nil, &fs.PathError{Op: "readdir", Path: o.name, Err: errors.New("not a directory")}
	}
	rest := o.entries[o.dirPos:]
	if n > 0 && len(rest) == 0 {
		return nil, io.EOF
	}
	if n > 0 && n < len(rest) {
		rest = rest[:n]
	}
	o.dirPos += len(rest)
	return slices.Clone(rest), nil
}
