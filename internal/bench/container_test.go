package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// staticHello builds examples/hello as the posix-spawn row does.
func staticHello(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc")
	}
	out := filepath.Join(t.TempDir(), "hello-static")
	if b, err := exec.Command("gcc", "-O2", "-static", "-o", out, "../../examples/hello/hello.c").CombinedOutput(); err != nil {
		t.Skipf("static glibc build failed (libc6-dev?): %v: %s", err, b)
	}
	return out
}

// TestNamespaceSandbox checks the namespaces row isolates what it claims:
// a program started the same way sees itself as pid 1, no network
// interface but loopback, its own hostname and only the rootfs, as nobody.
func TestNamespaceSandbox(t *testing.T) {
	if why := nsSkip(); why != "" {
		t.Skip(why)
	}
	bin := staticHello(t)
	rootfs, err := containerRootfs(t.TempDir(), bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := nsDo(rootfs)(context.Background()); err != nil {
		t.Fatalf("hello in the sandbox: %v", err)
	}
	// A static probe in the same rootfs, started with the same
	// attributes, reports what the hello would see.
	probe := filepath.Join(t.TempDir(), "probe.c")
	err = os.WriteFile(probe, []byte(`#include <stdio.h>
#include <unistd.h>
#include <net/if.h>
int main(void) {
	char host[256] = "";
	gethostname(host, sizeof host);
	struct if_nameindex *ifs = if_nameindex(), *i;
	int n = 0;
	for (i = ifs; i && i->if_index; i++) n++;
	printf("pid=%d uid=%d ifs=%d host=%s root=%d\n", (int)getpid(), (int)getuid(), n, host, access("/hello", X_OK) == 0 && access("/etc", F_OK) != 0);
	return 0;
}
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("gcc", "-O2", "-static", "-o", filepath.Join(rootfs, "probe"), probe).CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v: %s", err, b)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	attr := nsAttr(rootfs)
	attr.Files = []uintptr{0, w.Fd(), 2}
	pid, err := syscall.ForkExec("/probe", []string{"/probe"}, attr)
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	out.ReadFrom(r)
	var ws syscall.WaitStatus
	syscall.Wait4(pid, &ws, 0, nil)
	host, _ := os.Hostname()
	// In a new network namespace loopback exists but is the only
	// interface; a new UTS namespace starts with a copy of the hostname,
	// so "host=" only shows it was readable.
	want := "pid=1 uid=65534 ifs=1 host=" + host + " root=1\n"
	if ws.ExitStatus() != 0 || out.String() != want {
		t.Errorf("probe in the sandbox: exit %d, got %q, want %q", ws.ExitStatus(), out.String(), want)
	}
}

// TestRuncRow runs the runc row a few times and checks that every request
// is answered and that no container outlives its request.
func TestRuncRow(t *testing.T) {
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not installed (bench/setup.sh)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	bin := staticHello(t)
	dir := t.TempDir()
	rootfs, err := containerRootfs(dir, bin)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := newRunc(dir, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.close()
	do := rt.do()
	for i := 0; i < 3; i++ {
		if err := do(context.Background()); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	ids, err := rt.leftovers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) > 0 {
		t.Errorf("containers left after their requests: %v", ids)
	}
	// runc names each container's cgroup after its id, below the
	// runtime's own cgroup in each hierarchy: the top level of most of
	// them on these hosts (a hierarchy where the bench itself sits deeper
	// is not looked at).
	pattern := fmt.Sprintf("dust-bench-%d-*", os.Getpid())
	for _, g := range []string{"/sys/fs/cgroup/" + pattern, "/sys/fs/cgroup/*/" + pattern} {
		if left, _ := filepath.Glob(g); len(left) > 0 {
			t.Errorf("cgroups left after their requests: %v", left)
		}
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"readonly": true`, `"/hello"`, `"terminal": false`, `"type": "network"`} {
		if !strings.Contains(string(cfg), s) {
			t.Errorf("config.json lacks %s", s)
		}
	}
}

// TestQEMUMicrovm boots the QEMU guest with the CPU model the row picks:
// on hosts where plain -cpu host aborts (AMD, QEMU 7.2) the first choice
// must be the one that boots, not the fallback.
func TestQEMUMicrovm(t *testing.T) {
	bin, err := qemuBinary()
	if err != nil {
		t.Skip(err)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("no /dev/kvm")
	}
	guest, err := buildQEMUGuest(t.TempDir())
	if err != nil {
		t.Skip(err)
	}
	cpu, err := qemuCPU(context.Background(), bin, guest)
	if err != nil {
		t.Fatal(err)
	}
	if cpu != qemuCPUs[0] {
		t.Errorf("booted with -cpu %s, not %s: %s", cpu, qemuCPUs[0], func() error { return runQEMU(context.Background(), bin, guest, qemuCPUs[0]) }())
	}
}
