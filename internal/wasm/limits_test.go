package wasm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// Hostile modules, assembled byte by byte: each declares something that
// costs the host far more than its size.

func sec(id byte, body []byte) []byte {
	return append(appendU32([]byte{id}, uint32(len(body))), body...)
}

// vecOf is a vector of n copies of entry.
func vecOf(n int, entry []byte) []byte {
	return append(appendU32(nil, uint32(n)), bytes.Repeat(entry, n)...)
}

// codeEntry frames one function body (locals declarations included).
func codeEntry(body []byte) []byte { return append(appendU32(nil, uint32(len(body))), body...) }

// commandModule is a module with type () -> (), extra sections between
// the function and export sections (tables, memories), and one function
// per body, the first exported as _start.
func commandModule(tables, memories []byte, bodies ...[]byte) []byte {
	m := append([]byte(nil), wasmHeader...)
	m = append(m, sec(secType, []byte{1, 0x60, 0, 0})...)
	m = append(m, sec(secFunction, vecOf(len(bodies), []byte{0}))...)
	if tables != nil {
		m = append(m, sec(secTable, tables)...)
	}
	if memories != nil {
		m = append(m, sec(secMemory, memories)...)
	}
	m = append(m, sec(secExport, append([]byte{1, 6}, "_start\x00\x00"...))...)
	var code []byte
	for _, b := range bodies {
		code = append(code, codeEntry(b)...)
	}
	return append(m, sec(secCode, append(appendU32(nil, uint32(len(bodies))), code...))...)
}

// manyLocals declares n i32 locals in one function.
func manyLocals(n uint32) []byte {
	return commandModule(nil, nil, append(appendU32([]byte{1}, n), 0x7f, 0x0b))
}

// funcrefTable is a table section with one funcref table of min entries
// and no maximum.
func funcrefTable(min uint32) []byte { return appendU32([]byte{1, 0x70, 0}, min) }

// tableFill is a 100M-entry table and a _start filling it.
func tableFill(entries uint32) []byte {
	body := []byte{0, 0x41, 0, 0xd0, 0x70, 0x41}
	body = appendS64(body, int64(int32(entries)))
	body = append(body, 0xfc, 17, 0, 0x0b)
	return commandModule(funcrefTable(entries), nil, body)
}

// tableGrowLoop grows a table without a maximum by 64 Ki entries until
// table.grow fails, then fills it and traps.
func tableGrowLoop() []byte {
	body := []byte{0,
		0x03, 0x40, // loop
		0xd0, 0x70, 0x41, 0x80, 0x80, 0x04, 0xfc, 15, 0, // table.grow 0 (ref.null, 65536)
		0x41, 0x7f, 0x47, 0x0d, 0, // i32.const -1, i32.ne, br_if 0
		0x0b,
		0x41, 0, 0xd0, 0x70, 0xfc, 16, 0, 0xfc, 17, 0, // table.fill 0 (0, null, table.size)
		0x00, // unreachable
		0x0b}
	return commandModule(funcrefTable(0), nil, body)
}

// deepBlocks nests n empty blocks.
func deepBlocks(n int) []byte {
	body := append([]byte{0}, bytes.Repeat([]byte{0x02, 0x40}, n)...)
	body = append(body, bytes.Repeat([]byte{0x0b}, n+1)...)
	return commandModule(nil, nil, body)
}

// manyFuncs is n empty functions.
func manyFuncs(n int) []byte {
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = []byte{0, 0x0b}
	}
	return commandModule(nil, nil, bodies...)
}

// hiddenMemory declares a memory of pages pages that it does not export.
func hiddenMemory(pages uint32) []byte {
	return commandModule(nil, appendU32([]byte{1, 0}, pages), []byte{0, 0x0b})
}

// lyingCounts are modules whose inner counts or lengths claim more than
// the bytes that follow: wazero's decoder allocates from each of them
// before reading what they count.
func lyingCounts() map[string][]byte {
	huge := appendU32(nil, 0xffffffff)
	elem := append(append([]byte{1, 0, 0x41, 0, 0x0b}, huge...), 0)
	data := append(append([]byte{1, 1}, huge...), 0)
	name := append(append([]byte{4}, "name"...), append(append([]byte{1, 6}, huge...), 0)...)
	custom := append(append([]byte(nil), huge...), "x"...)
	code := append(append([]byte{1}, huge...), 0, 0x0b)
	return map[string][]byte{
		"element entries": withSection(commandModule(funcrefTable(1), nil, []byte{0, 0x0b}), secElement, elem),
		"data bytes":      append(commandModule(nil, nil, []byte{0, 0x0b}), sec(secData, data)...),
		"name section":    append(commandModule(nil, nil, []byte{0, 0x0b}), sec(secCustom, name)...),
		"custom name":     append(commandModule(nil, nil, []byte{0, 0x0b}), sec(secCustom, custom)...),
		"code size":       append(append([]byte(nil), commandModule(nil, nil)[:len(commandModule(nil, nil))-3]...), sec(secCode, code)...),
		"params":          append(append([]byte(nil), wasmHeader...), sec(secType, append(append([]byte{1, 0x60}, huge...), 0x7f))...),
	}
}

// withSection puts a section into a module where the section order wants it.
func withSection(image []byte, id byte, body []byte) []byte {
	m, err := parseBinary(image)
	if err != nil {
		panic(err)
	}
	m.setSection(id, body)
	return m.encode()
}

func TestHostileModules(t *testing.T) {
	const mib = 1 << 20
	fortyTwo := manyLocals(0xfffffff0)
	if len(fortyTwo) != 42 {
		t.Fatalf("the 0xFFFFFFF0-locals module is %d bytes, want the issue's 42", len(fortyTwo))
	}
	spread := make([][]byte, 21) // 21 × 50,000 locals: each within bounds, not all
	for i := range spread {
		spread[i] = append(appendU32([]byte{1}, maxFuncLocals), 0x7f, 0x0b)
	}
	cases := []struct {
		name   string
		image  []byte
		memory int64
		want   string
	}{
		{"0xFFFFFFF0 locals", fortyTwo, 0, "function 0 declares 4294967280 locals; the limit is 50000"},
		{"50M locals", manyLocals(50_000_000), 0, "function 0 declares 50000000 locals; the limit is 50000"},
		{"1.05M locals in all", commandModule(nil, nil, spread...), 0, "declare 1050000 locals in all; the limit is 1000000"},
		{"100M-entry table", tableFill(100_000_000), mib, "tables start with 100000000 entries; the limit is 131072"},
		{"100k-deep nesting", deepBlocks(100_000), 0, "function 0 nests blocks 100000 deep; the limit is 10000"},
		{"500k functions", manyFuncs(500_000), 0, "declares 500000 functions; the limit is 100000"},
		{"hidden memory", hiddenMemory(1000), mib, "memory 0 starts at 64000 KiB, over the 1024 KiB limit"},
		{"100k custom sections", append(commandModule(nil, nil, []byte{0, 0x0b}), bytes.Repeat([]byte{0, 1, 0}, 100_000)...), 0, "more than 1000 custom sections"},
	}
	for name, b := range lyingCounts() {
		cases = append(cases, struct {
			name   string
			image  []byte
			memory int64
			want   string
		}{"lying " + name, b, 0, "malformed"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			im, err := Prepare(c.image, machine.Limits{Memory: c.memory}, testOptions)
			runtime.ReadMemStats(&after)
			if err == nil {
				im.Close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q: want ErrBadImage mentioning %q", err, c.want)
			}
			// Refused before compilation: the cost is reading the bytes.
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20+4*uint64(len(c.image)) {
				t.Errorf("refusing a %d-byte module allocated %d bytes", len(c.image), alloc)
			}
			t.Log(err)
		})
	}
}

// A table without a maximum is given one: a guest growing it until
// table.grow fails, then trapping, ran out of memory.
func TestTableGrowLoop(t *testing.T) {
	im := prepareBytes(t, tableGrowLoop(), machine.Limits{Memory: 1 << 20}, testOptions)
	if !im.tablesCapped {
		t.Fatal("the table was not capped")
	}
	res, _, _ := runOnce(t, im, nil)
	if res.Outcome != machine.MemoryLimit || !strings.Contains(res.Detail, "table.grow beyond the 131072 table entries the 1024 KiB memory limit allows refused") {
		t.Fatalf("outcome %v: %v", res.Outcome, res.Err())
	}
	t.Log(res.Err())
	// A table that starts with the whole budget can be filled.
	im = prepareBytes(t, tableFill(131072), machine.Limits{Memory: 1 << 20}, testOptions)
	if res, _, _ := runOnce(t, im, nil); res.Outcome != machine.Served {
		t.Fatalf("filling a table within the budget: %v", res.Err())
	}
}

// rssChild marks the child process TestTableRSS runs itself in, so that
// the high-water mark it reads is that of the table requests alone.
const rssChild = "DUST_WASM_TABLE_RSS_CHILD"

// Four concurrent requests doing the worst a module can with tables
// (grow one to its cap, fill it) under memory=1MiB, and a deploy of the
// 100M-entry table module: the process's peak RSS stays well under
// 64 MiB above where it started (before the cap: +3 GB).
func TestTableRSS(t *testing.T) {
	if os.Getenv(rssChild) == "1" {
		tableRSSChild(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestTableRSS$", "-test.v")
	cmd.Env = append(os.Environ(), rssChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var base, peak int64 = -1, -1
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if _, after, ok := strings.Cut(sc.Text(), "VmHWM kB: "); ok {
			b, p, _ := strings.Cut(after, " ")
			base, _ = strconv.ParseInt(b, 10, 64)
			peak, _ = strconv.ParseInt(p, 10, 64)
		}
	}
	if base < 0 || peak < 0 {
		t.Fatalf("child reported no high-water mark:\n%s", out)
	}
	t.Logf("peak RSS %d KiB, %+d KiB over the %d KiB baseline", peak, peak-base, base)
	if peak-base > 64<<10 {
		t.Errorf("table requests raised the peak RSS by %d KiB", peak-base)
	}
}

func tableRSSChild(t *testing.T) {
	base := vmHWM(t)
	limits := machine.Limits{Memory: 1 << 20, Timeout: time.Minute}
	if _, err := Prepare(tableFill(100_000_000), limits, testOptions); !errors.Is(err, machine.ErrBadImage) {
		t.Fatalf("the 100M-entry table module: %v", err)
	}
	im := prepareBytes(t, tableGrowLoop(), limits, testOptions)
	var wg sync.WaitGroup
	results := make([]machine.Result, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := im.NewMachine()
			if err != nil {
				results[i].Cause = err
				return
			}
			defer m.Close()
			results[i] = m.Run(context.Background(), &machine.Request{}, io.Discard, io.Discard)
		}()
	}
	wg.Wait()
	for _, res := range results {
		if res.Outcome != machine.MemoryLimit {
			t.Errorf("outcome %v: %v", res.Outcome, res.Err())
		}
	}
	fmt.Printf("VmHWM kB: %d %d\n", base, vmHWM(t))
}

// vmHWM is the process's peak resident set size in KiB.
func vmHWM(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Skip("no VmHWM in /proc/self/status")
	return 0
}

// The real programs are well within the bounds, and every instruction in
// them is one the walker knows. The figures are docs/wasm.md's.
func TestRealModuleFigures(t *testing.T) {
	names := []string{"hello", "echo", "sha256", "exitcode", "loop", "oom", "flood", "logflood", "trap", "counter",
		"go-hello", "go-echo", "go-fast-hello", "go-fast-echo"}
	images := map[string][]byte{}
	for _, n := range names {
		if !strings.HasPrefix(n, "go-") && !haveWasiToolchain() {
			continue
		}
		images[n] = exampleWasm(t, n)
	}
	if !testing.Short() {
		images["bigprog"] = buildGo(t, "testdata/bigprog")
	}
	for n, b := range images {
		m, err := parseBinary(b)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		t0 := time.Now()
		f, err := inspect(m)
		took := time.Since(t0)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if f.partial != 0 {
			t.Errorf("%s: the walk stopped early in %d functions", n, f.partial)
		}
		if err := f.check(machine.DefaultMemory); err != nil {
			t.Errorf("%s: %v", n, err)
		}
		var entries uint32
		for _, tb := range f.tables {
			entries += tb.lim.min
		}
		t.Logf("%s: %d bytes (read in %v): %d funcs, %d types, %d globals, %d table entries, %d elem entries, %d data segments of %d bytes, %d code bytes, largest body %d, locals %d (most in one function %d), depth %d",
			n, len(b), took, f.funcs, f.types, f.globals, entries, f.elemEntries, f.dataSegments, f.dataBytes, f.codeBytes, f.maxBody, f.locals, f.maxLocals, f.maxDepth)
	}
	b, ok := images["bigprog"]
	if !ok {
		return
	}
	t0 := time.Now()
	im := prepareBytes(t, b, machine.Limits{}, testOptions)
	t.Logf("bigprog: prepared in %v", time.Since(t0))
	res, out, log := runOnce(t, im, nil)
	if res.Outcome != machine.Served || !strings.HasSuffix(out, "404\n") {
		t.Fatalf("bigprog: %v %q\n%s", res.Err(), out, log)
	}
}
