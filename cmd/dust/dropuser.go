package main

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
)

// dropPrivileges switches the whole process to the unprivileged account
// name, after what needs root is done: /dev/kvm is opened (the descriptor
// stays usable; machines are created through it) and the listeners are
// bound. The data directory is handed to the account first, so the store
// can go on writing. It must run before any guest did, because the vCPU
// worker threads' seccomp filter does not allow changing credentials.
func dropPrivileges(name, dataDir string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("--user %s: %w", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("--user %s: non-numeric uid/gid %q/%q", name, u.Uid, u.Gid)
	}
	if _, err := kvm.Open(); err != nil {
		// Without KVM only wasm apps run; that needs no device.
		fmt.Fprintf(os.Stderr, "dust serve: note: %v\n", err)
	}
	err = filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("--user %s: handing over %s: %w", name, dataDir, err)
	}
	// Go applies these to every thread of the process.
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("setgid: %w", err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setuid: %w", err)
	}
	// Changing credentials makes the process non-dumpable, which makes
	// /proc/self root-owned; the hvt warm-up probe reads its own page map.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_DUMPABLE: %w", err)
	}
	if os.Getuid() != uid || os.Geteuid() != uid {
		return fmt.Errorf("--user %s: still running as uid %d", name, os.Geteuid())
	}
	return nil
}
