package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
)

// The container rows put the posix-spawn row's static hello in a rootfs
// that holds nothing else, and start it once per request the two ways a
// "container per request" is usually built: a full OCI runtime (runc) and
// the bare kernel namespaces a runtime sets up, without the runtime.

// containerRootfs copies the static hello into dir/rootfs/hello.
func containerRootfs(dir, staticHello string) (string, error) {
	rootfs := filepath.Join(dir, "rootfs")
	// 0755: the namespaces row runs the program as nobody, which must be
	// able to resolve "/" and "/hello" once chrooted.
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return "", err
	}
	b, err := os.ReadFile(staticHello)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "hello"), b, 0o755); err != nil {
		return "", err
	}
	return rootfs, nil
}

// nsCloneflags are the namespaces runc's default spec (1.1) creates: the
// kernel's side of a container.
const nsCloneflags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWNET |
	syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS

// nsDo runs the hello in fresh pid, mount, network, IPC and UTS namespaces,
// chrooted into rootfs, as nobody: the same clone+execve+wait as
// posix-spawn with the flags a container needs, and nothing a runtime adds
// (no cgroup, no pivot_root, no seccomp, no mounts).
//
// Dropping to nobody is what keeps the chroot a boundary: root keeps
// CAP_SYS_CHROOT and could leave it.
func nsDo(rootfs string) func(context.Context) error {
	return forkExecDo("/hello", nsAttr(rootfs))
}

func nsAttr(rootfs string) *syscall.ProcAttr {
	return &syscall.ProcAttr{
		// The working directory is set after the chroot: without it the
		// child would start with its cwd outside its root.
		Dir: "/",
		Env: helloEnv,
		Sys: &syscall.SysProcAttr{
			Cloneflags: nsCloneflags,
			Chroot:     rootfs,
			Credential: &syscall.Credential{Uid: 65534, Gid: 65534},
		},
	}
}

// nsSkip says why the namespaces row cannot run here, or "".
func nsSkip() string {
	if os.Geteuid() != 0 {
		return "needs root: creating namespaces and chroot need CAP_SYS_ADMIN and CAP_SYS_CHROOT"
	}
	return ""
}

// runcRuntime is runc with its state under the bench's scratch directory,
// so that it shares nothing with containers others run on the host.
type runcRuntime struct {
	bin, state, bundle string
	seq                atomic.Int64
}

// newRunc writes an OCI bundle around rootfs: runc's own default spec
// (`runc spec`, or `runc spec --rootless` when not root), changed only
// where a request needs it: the hello as the process, the CGI environment,
// no terminal, a read-only root.
func newRunc(dir, rootfs string) (*runcRuntime, error) {
	bin, err := exec.LookPath("runc")
	if err != nil {
		return nil, errors.New("runc not installed (bench/setup.sh, or: apt-get install runc)")
	}
	r := &runcRuntime{bin: bin, state: filepath.Join(dir, "runc-state"), bundle: dir}
	if err := os.MkdirAll(r.state, 0o700); err != nil {
		return nil, err
	}
	args := []string{"spec", "--bundle", dir}
	if os.Geteuid() != 0 {
		args = append(args, "--rootless")
	}
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("runc spec: %w: %s", err, bytes.TrimSpace(out))
	}
	cfgPath := filepath.Join(dir, "config.json")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	// A generic map keeps every field runc wrote, including ones this
	// code does not know.
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		return nil, fmt.Errorf("runc spec output: %w", err)
	}
	proc, ok1 := spec["process"].(map[string]any)
	root, ok2 := spec["root"].(map[string]any)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("runc spec output lacks process or root: %s", raw)
	}
	proc["terminal"] = false
	proc["args"] = []string{"/hello"}
	proc["env"] = helloEnv
	root["path"] = rootfs
	root["readonly"] = true
	out, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, out, 0o644); err != nil {
		return nil, err
	}
	return r, nil
}

// do is one `runc run`: create the container (namespaces, mounts, cgroup,
// pivot_root), start the hello, wait, delete it.
func (r *runcRuntime) do() func(context.Context) error {
	var out, errb bytes.Buffer
	return func(ctx context.Context) error {
		out.Reset()
		errb.Reset()
		id := fmt.Sprintf("dust-bench-%d-%d", os.Getpid(), r.seq.Add(1))
		cmd := exec.CommandContext(ctx, r.bin, "--root", r.state, "run", "--bundle", r.bundle, id)
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("runc run: %w: %s", err, bytes.TrimSpace(errb.Bytes()))
		}
		return checkHello(out.Bytes())
	}
}

// leftovers lists the containers runc still knows about: `runc run`
// deletes its container on exit, so after a clean run there are none.
func (r *runcRuntime) leftovers() ([]string, error) {
	out, err := exec.Command(r.bin, "--root", r.state, "list", "-q").Output()
	if err != nil {
		return nil, fmt.Errorf("runc list: %w", err)
	}
	return strings.Fields(string(out)), nil
}

// close removes what an interrupted request left (a cancelled `runc run`
// is killed before it can delete its container and cgroups).
func (r *runcRuntime) close() {
	ids, _ := r.leftovers()
	for _, id := range ids {
		exec.Command(r.bin, "--root", r.state, "delete", "--force", id).Run()
	}
}

// containerContenders builds the two container rows; either comes back
// with skip set when it cannot run here.
func containerContenders(a *artifacts) []*contender {
	ns := &contender{Name: "container-ns", Isolation: "namespaces + chroot",
		Note: "clone(NEWPID|NEWNS|NEWNET|NEWIPC|NEWUTS)+chroot+setuid(nobody)+execve+wait of the static hello, no runtime, no cgroup"}
	rc := &contender{Name: "container-runc", Isolation: "container (runc)",
		Note: "`runc run` per request: runc's default spec, read-only rootfs holding only the static hello"}
	rootfs := ""
	if why := a.why("hello-static"); why != "" {
		ns.skip, rc.skip = why, why
	} else if p, err := containerRootfs(filepath.Join(a.dir, "container"), a.staticHello); err != nil {
		ns.skip = "building the rootfs: " + err.Error()
		rc.skip = ns.skip
	} else {
		rootfs = p
	}
	// Each row is tried once here: what this host refuses (no
	// permission, cgroups runc cannot use) is a skip with the reason,
	// not a failure of the run.
	if ns.skip == "" {
		if ns.skip = nsSkip(); ns.skip == "" {
			do := nsDo(rootfs)
			if err := do(context.Background()); err != nil {
				ns.skip = err.Error()
			} else {
				ns.do = do
			}
		}
	}
	if rc.skip == "" {
		r, err := newRunc(filepath.Join(a.dir, "container"), rootfs)
		if err != nil {
			rc.skip = err.Error()
		} else {
			do := r.do()
			if err := do(context.Background()); err != nil {
				rc.skip = err.Error()
				r.close()
			} else {
				rc.do, rc.close = do, r.close
			}
		}
	}
	return []*contender{ns, rc}
}
