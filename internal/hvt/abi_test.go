package hvt

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestABIHeaderMatches compiles guest/include/dust/abi.h and checks that
// the guest's view of the ABI is the monitor's.
func TestABIHeaderMatches(t *testing.T) {
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found: cannot compile the guest ABI header")
	}
	inc, _ := filepath.Abs("../../guest/include")
	const src = `#include <stdio.h>
#include <stddef.h>
#include <dust/abi.h>
#define P(n, v) printf("%s %llu\n", n, (unsigned long long)(v));
#define O(s, f) P(#s "." #f, offsetof(struct s, f))
int main(void) {
	P("version", DUST_ABI_VERSION) P("note_type", DUST_NOTE_TYPE) P("magic", DUST_BOOT_MAGIC)
	P("monitor_end", DUST_MONITOR_END) P("boot_info", DUST_BOOT_INFO)
	P("request_base", DUST_REQUEST_BASE) P("request_end", DUST_REQUEST_END) P("image_base", DUST_IMAGE_BASE)
	P("port_base", DUST_PORT_BASE) P("write", DUST_HC_WRITE) P("read", DUST_HC_READ) P("exit", DUST_HC_EXIT) P("ready", DUST_HC_READY)
	P("stdout", DUST_FD_STDOUT) P("stderr", DUST_FD_STDERR)
	P("exit_normal", DUST_EXIT_NORMAL) P("exit_abort", DUST_EXIT_ABORT) P("exit_oom", DUST_EXIT_OOM)
	P("bi_size", sizeof(struct dust_boot_info))
	O(dust_boot_info, abi_version) O(dust_boot_info, size) O(dust_boot_info, mem_size)
	O(dust_boot_info, heap_start) O(dust_boot_info, heap_end) O(dust_boot_info, stack_top)
	O(dust_boot_info, tsc_hz) O(dust_boot_info, realtime_ns) O(dust_boot_info, argc)
	O(dust_boot_info, argv) O(dust_boot_info, envp) O(dust_boot_info, body_len)
	O(dust_boot_info, body_inline) O(dust_boot_info, body_inline_len) O(dust_boot_info, random)
	P("write_size", sizeof(struct dust_hc_write)) P("read_size", sizeof(struct dust_hc_read))
	P("exit_size", sizeof(struct dust_hc_exit)) O(dust_hc_read, ret) O(dust_hc_exit, err_len)
	return 0;
}
`
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.c"), []byte(src), 0o644)
	bin := filepath.Join(dir, "a")
	if out, err := exec.Command(cc, "-I", inc, "-o", bin, filepath.Join(dir, "a.c")).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{
		"version": abiVersion, "note_type": noteType, "magic": bootMagic, "monitor_end": monitorEnd,
		"boot_info": bootInfoAddr, "request_base": requestBase, "request_end": requestEnd, "image_base": imageBase,
		"port_base": portBase, "write": hcWrite, "read": hcRead, "exit": hcExit, "ready": hcReady, "stdout": fdStdout, "stderr": fdStderr,
		"exit_normal": exitNormal, "exit_abort": exitAbort, "exit_oom": exitOOM, "bi_size": bootInfoSize,
		"dust_boot_info.abi_version": biABIVersion, "dust_boot_info.size": biSize, "dust_boot_info.mem_size": biMemSize,
		"dust_boot_info.heap_start": biHeapStart, "dust_boot_info.heap_end": biHeapEnd, "dust_boot_info.stack_top": biStackTop,
		"dust_boot_info.tsc_hz": biTSCHz, "dust_boot_info.realtime_ns": biRealtimeNs, "dust_boot_info.argc": biArgc,
		"dust_boot_info.argv": biArgv, "dust_boot_info.envp": biEnvp, "dust_boot_info.body_len": biBodyLen,
		"dust_boot_info.body_inline": biBodyInline, "dust_boot_info.body_inline_len": biBodyInlineLen,
		"dust_boot_info.random": biRandom, "write_size": hcWriteSize, "read_size": hcReadSize, "exit_size": hcExitSize,
		"dust_hc_read.ret": 16, "dust_hc_exit.err_len": 40,
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		v, _ := strconv.ParseUint(f[1], 10, 64)
		w, ok := want[f[0]]
		if !ok {
			t.Errorf("%s printed but not checked", f[0])
			continue
		}
		seen++
		if v != w {
			t.Errorf("%s: C %#x, Go %#x", f[0], v, w)
		}
	}
	if seen != len(want) {
		t.Errorf("checked %d of %d values", seen, len(want))
	}
}
