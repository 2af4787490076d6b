package wasm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/machine"
)

func sect(id byte, items ...[]byte) binSection {
	body := appendU32(nil, uint32(len(items)))
	for _, it := range items {
		body = append(body, it...)
	}
	return binSection{id: id, body: body}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func i32c(v int32) []byte { return appendS64([]byte{0x41}, int64(v)) }

func wname(s string) []byte { return append(appendU32(nil, uint32(len(s))), s...) }

// reactorModule is a hand-assembled reactor whose _initialize leaves state
// of every kind the snapshot must carry: globals of the four number types,
// a store into the initial page, a page grown and written, next to a data
// segment. dust_serve returns a sum of all of it (149), then overwrites
// part of it, so that a second request would see the change if state
// leaked.
func reactorModule() *binModule {
	f32 := binary.LittleEndian.AppendUint32([]byte{0x43}, math.Float32bits(1.5))
	f64 := binary.LittleEndian.AppendUint64([]byte{0x44}, math.Float64bits(-2.25))
	store := []byte{0x36, 2, 0}
	initBody := cat(
		i32c(42), []byte{0x24, 0},
		appendS64([]byte{0x42}, -5), []byte{0x24, 1},
		f32, []byte{0x24, 2},
		f64, []byte{0x24, 3},
		i32c(1000), i32c(7), store,
		i32c(1), []byte{0x40, 0, 0x1a}, // memory.grow 1; drop
		i32c(70000), i32c(9), store,
		[]byte{0x0b})
	load := []byte{0x28, 2, 0}
	serveBody := cat(
		[]byte{0x23, 0},
		i32c(1000), load, []byte{0x6a},
		i32c(70000), load, []byte{0x6a},
		i32c(2000), []byte{0x2d, 0, 0, 0x6a}, // i32.load8_u of the data segment
		[]byte{0x23, 2, 0xa8, 0x6a}, // i32.trunc_f32_s
		[]byte{0x23, 1, 0xa7, 0x6a}, // i32.wrap_i64
		[]byte{0x23, 3, 0xaa, 0x6a}, // i32.trunc_f64_s
		i32c(1000), i32c(100), store,
		i32c(0), []byte{0x24, 0},
		[]byte{0x0b})
	fn := func(body []byte) []byte {
		return append(appendU32(nil, uint32(len(body)+1)), append([]byte{0}, body...)...)
	}
	zero := func(typ byte, c []byte) []byte { return cat([]byte{typ, 1}, c, []byte{0x0b}) }
	return &binModule{sections: []binSection{
		sect(secType, []byte{0x60, 0, 0}, []byte{0x60, 0, 1, valI32}),
		sect(secFunction, []byte{0}, []byte{1}),
		sect(secMemory, []byte{0, 1}),
		sect(secGlobal,
			zero(valI32, i32c(0)), zero(valI64, []byte{0x42, 0}),
			zero(valF32, []byte{0x43, 0, 0, 0, 0}), zero(valF64, []byte{0x44, 0, 0, 0, 0, 0, 0, 0, 0})),
		sect(secExport, cat(wname("_initialize"), []byte{kindFunc, 0}), cat(wname("dust_serve"), []byte{kindFunc, 1}), cat(wname("memory"), []byte{kindMemory, 0})),
		{id: secDataCount, body: []byte{1}},
		sect(secCode, fn(initBody), fn(serveBody)),
		sect(secData, cat([]byte{0}, i32c(2000), []byte{0x0b}, wname("abc"))),
		{id: secCustom, body: cat(wname("kept"), []byte("custom"))},
	}}
}

func TestSnapshotHandMadeReactor(t *testing.T) {
	im := prepareBytes(t, reactorModule().encode(), machine.Limits{}, testOptions)
	if ok, _ := im.Reactor(); !ok {
		t.Fatal("not prepared as a reactor")
	}
	for i := 0; i < 3; i++ {
		res, _, _ := runOnce(t, im, nil)
		if res.Outcome != machine.Served || res.ExitStatus != 149 {
			t.Fatalf("request %d: outcome %v status %d (%v), want served with 149", i, res.Outcome, res.ExitStatus, res.Err())
		}
	}
}

func TestSnapshotModuleShape(t *testing.T) {
	src, err := newSnapshotSource(reactorModule().encode())
	if err != nil {
		t.Fatal(err)
	}
	mem := make([]byte, 2*pageSize)
	mem[3], mem[pageSize+5] = 1, 2
	b, err := src.build(&state{globals: []uint64{1, 2, 3, 4}, memory: mem})
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseBinary(b)
	if err != nil {
		t.Fatal(err)
	}
	if ms, _ := m.memories(); len(ms) != 1 || ms[0].min != 2 {
		t.Errorf("memories %+v, want a minimum of 2 pages", ms)
	}
	if n, passive, _ := m.dataSegments(); n != 2 || passive != 0 {
		t.Errorf("%d data segments (%d passive), want 2 active", n, passive)
	}
	if dc, _ := m.section(secDataCount); !bytes.Equal(dc, []byte{2}) {
		t.Errorf("data count %v, want 2", dc)
	}
	es, _ := m.exports()
	for _, e := range es {
		if e.name == initializeExport || strings.HasPrefix(e.name, globalExportPrefix) {
			t.Errorf("the snapshot still exports %q", e.name)
		}
	}
	if last := m.sections[len(m.sections)-1]; last.id != secCustom || !bytes.HasSuffix(last.body, []byte("kept custom"[5:])) {
		t.Error("the custom section was lost")
	}
}

func TestSnapshotRefuses(t *testing.T) {
	cases := []struct {
		name   string
		change func(m *binModule)
		want   string
	}{
		{"start function", func(m *binModule) { m.setSection(secStart, []byte{0}) }, "start function"},
		{"passive data", func(m *binModule) { m.setSection(secData, sect(secData, cat([]byte{1}, wname("x"))).body) }, "passive"},
		{"imported memory", func(m *binModule) {
			m.setSection(secImport, sect(secImport, cat(wname("env"), wname("mem"), []byte{kindMemory, 0, 1})).body)
		}, "imports memories"},
		{"two memories", func(m *binModule) { m.setSection(secMemory, sect(secMemory, []byte{0, 1}, []byte{0, 1}).body) }, "exactly one memory"},
		{"v128 global", func(m *binModule) {
			m.setSection(secGlobal, sect(secGlobal, cat([]byte{valV128, 0, 0xfd, 12}, make([]byte, 16), []byte{0x0b})).body)
		}, "cannot be captured"},
		{"export name taken", func(m *binModule) {
			m.setSection(secExport, sect(secExport, cat(wname(globalExportPrefix+"0"), []byte{kindFunc, 0})).body)
		}, "already exports"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := reactorModule()
			c.change(m)
			if _, err := newSnapshotSource(m.encode()); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

// decodeDataImage rebuilds the memory a data section describes.
func decodeDataImage(t *testing.T, body []byte, size int) []byte {
	t.Helper()
	mem := make([]byte, size)
	r := &reader{b: body}
	n := r.u32()
	for i := uint32(0); i < n; i++ {
		if r.u32() != 0 || r.byte() != 0x41 {
			t.Fatal("not an active segment at an i32.const offset")
		}
		off := int(r.uleb(32))
		if r.byte() != 0x0b {
			t.Fatal("offset expression not ended")
		}
		copy(mem[off:], r.bytes(r.u32()))
	}
	if err := r.end(); err != nil {
		t.Fatal(err)
	}
	return mem
}

func TestDataImage(t *testing.T) {
	mem := make([]byte, 1000)
	copy(mem[10:], "abc")
	copy(mem[10+3+snapshotGap:], "d")      // close enough to share a segment
	copy(mem[100+3+snapshotGap+1:], "efg") // far enough for its own
	mem[999] = 1
	body, n := dataImage(mem)
	if n != 3 {
		t.Errorf("%d segments, want 3", n)
	}
	// Offsets are small here, so the signed LEB decoded as unsigned is
	// the same number.
	if got := decodeDataImage(t, body, len(mem)); !bytes.Equal(got, mem) {
		t.Error("the data image does not rebuild the memory")
	}
	if _, n := dataImage(make([]byte, pageSize)); n != 0 {
		t.Errorf("an all-zero memory needs %d segments", n)
	}
}

func TestLEB128(t *testing.T) {
	for _, v := range []uint32{0, 1, 127, 128, 1 << 20, math.MaxUint32} {
		r := &reader{b: appendU32(nil, v)}
		if got := r.u32(); got != v || r.end() != nil {
			t.Errorf("u32 %d: got %d, %v", v, got, r.err)
		}
	}
	for _, v := range []int64{0, 1, -1, 63, 64, -64, -65, math.MaxInt32, math.MinInt32, math.MaxInt64, math.MinInt64} {
		b := appendS64(nil, v)
		r := &reader{b: b}
		if r.sleb(64); r.end() != nil {
			t.Errorf("s64 %d (% x): %v", v, b, r.err)
		}
	}
	for _, bad := range [][]byte{
		{0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, // six bytes
		{0xff, 0xff, 0xff, 0xff, 0x1f},       // 35 bits
		{0x80},                               // cut short
	} {
		r := &reader{b: bad}
		if r.u32(); r.err == nil {
			t.Errorf("% x read as a u32", bad)
		}
	}
}

func TestParseRoundTrip(t *testing.T) {
	for _, name := range []string{"go-fast-hello", "go-hello"} {
		b := exampleWasm(t, name)
		m, err := parseBinary(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(m.encode(), b) {
			t.Errorf("%s: parse and encode changed the binary", name)
		}
	}
	if _, err := parseBinary(append(reactorModule().encode(), 1, 0)); err == nil {
		t.Error("a second type section was accepted")
	}
}

// FuzzParseBinary: whatever an upload holds, reading and rewriting it
// returns an error or a result, never a panic, and a binary that parses
// encodes back to itself.
func FuzzParseBinary(f *testing.F) {
	f.Add(reactorModule().encode())
	f.Add(wasmModule([][2]string{{"wasi_snapshot_preview1", "fd_write"}}, "_start"))
	f.Add([]byte("\x00asm\x01\x00\x00\x00\x00\x02\x01a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseBinary(b)
		if err != nil {
			return
		}
		if !bytes.Equal(m.encode(), b) {
			t.Fatal("round trip changed the binary")
		}
		m.imports()
		m.exports()
		m.globals()
		m.memories()
		m.dataSegments()
		isReactor(b)
		src, err := newSnapshotSource(b)
		if err != nil {
			return
		}
		st := &state{globals: make([]uint64, len(src.globals)), memory: make([]byte, pageSize)}
		st.memory[7] = 1
		if out, err := src.build(st); err == nil {
			if _, err := parseBinary(out); err != nil {
				t.Fatalf("the snapshot of a parsable module does not parse: %v", err)
			}
		}
	})
}

// buildReactor builds a wasip1 reactor from a directory of this package.
func buildReactor(t testing.TB, dir string) []byte {
	t.Helper()
	return buildGo(t, dir, "-buildmode=c-shared")
}

// The snapshot is taken before any request, so each request starts from
// it: the counter and the heap are 1 every time, through a pool too; and
// args and environment are the request's, not the deploy's (empty) ones.
func TestGoReactorFreshState(t *testing.T) {
	im := prepareBytes(t, buildReactor(t, "testdata/gofastprobe"), machine.Limits{}, testOptions)
	pool := machine.NewPool(im, machine.PoolOptions{Size: 2})
	defer pool.Close()
	for i := 0; i < 4; i++ {
		var out, log bytes.Buffer
		req := &machine.Request{
			Args: []string{"/probe", "n=" + string(rune('0'+i))},
			Env:  []string{"PROBE=request " + string(rune('0'+i)), "QUERY_STRING=n"},
		}
		if _, err := pool.Do(t.Context(), req, &out, &log); err != nil {
			t.Fatalf("%v\n%s", err, log.String())
		}
		_, body := splitCGI(t, out.String())
		want := "counter=1 heap=1\nargs=[\"/probe\" \"n=" + string(rune('0'+i)) + "\"]\nPROBE=\"request " + string(rune('0'+i)) + "\" true\nstart-env=0 env=2\n"
		if body != want {
			t.Fatalf("request %d:\n%s\nwant\n%s", i, body, want)
		}
	}
}

func TestGoReactorExitAndPanic(t *testing.T) {
	im := prepareBytes(t, buildReactor(t, "testdata/gofastprobe"), machine.Limits{}, testOptions)
	res, out, _ := runOnce(t, im, &machine.Request{Env: []string{"QUERY_STRING=exit3"}})
	// os.Exit skips the flush of the buffered response, as it would in
	// a command.
	if res.Outcome != machine.Served || res.ExitStatus != 3 || out != "" {
		t.Errorf("os.Exit(3): outcome %v status %d, %q", res.Outcome, res.ExitStatus, out)
	}
	res, _, log := runOnce(t, im, &machine.Request{Env: []string{"QUERY_STRING=panic"}})
	if res.Outcome != machine.Served || res.ExitStatus != 2 || !strings.Contains(log, "panic: asked to") {
		t.Errorf("panic: outcome %v status %d, log %q", res.Outcome, res.ExitStatus, log)
	}
	// And the next request is unaffected.
	if res, out, _ := runOnce(t, im, nil); res.Err() != nil || !strings.Contains(out, "counter=1") {
		t.Errorf("after a panic: %v %q", res.Err(), out)
	}
}

func TestGoReactorLimits(t *testing.T) {
	im := prepareBytes(t, exampleWasm(t, "go-fast-echo"), machine.Limits{MaxOutput: 100}, testOptions)
	req, _ := (func() (*machine.Request, string) {
		body := strings.Repeat("x", 1000)
		return &machine.Request{Env: []string{"CONTENT_LENGTH=1000"}, Body: strings.NewReader(body), BodyLen: 1000}, ""
	})()
	res, out, _ := runOnce(t, im, req)
	if res.Outcome != machine.OutputLimit || len(out) != 100 {
		t.Errorf("outcome %v with %d bytes, want OutputLimit with 100", res.Outcome, len(out))
	}
	if _, err := Prepare(exampleWasm(t, "go-fast-hello"), machine.Limits{Memory: 1 << 20}, testOptions); !errors.Is(err, machine.ErrBadImage) {
		t.Errorf("a 1 MiB memory limit: %v, want ErrBadImage", err)
	}
}

// A Go command (no dustgo) is prepared and run as before; a dustgo app
// built as a command, which would run an empty main, is refused.
func TestGoCommandUnchanged(t *testing.T) {
	im := prepare(t, "go-hello", machine.Limits{})
	if ok, _ := im.Reactor(); ok {
		t.Error("go-hello was prepared as a reactor")
	}
	if res, out, _ := runOnce(t, im, nil); res.Err() != nil || !strings.HasSuffix(out, "Hello, world!\n") {
		t.Errorf("%v %q", res.Err(), out)
	}
	_, err := Prepare(buildGo(t, "testdata/gofastprobe"), machine.Limits{}, testOptions)
	if !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), "-buildmode=c-shared") {
		t.Errorf("dustgo app built as a command: %v", err)
	}
}

// An http.Handler through dusthttp: routing, path values, query and
// headers come from the request, a miss is the mux's 404.
func TestGoReactorHTTPHandler(t *testing.T) {
	im := prepareBytes(t, buildReactor(t, "testdata/gofasthttp"), machine.Limits{}, testOptions)
	env := func(path string) []string {
		return []string{"GATEWAY_INTERFACE=CGI/1.1", "REQUEST_METHOD=GET", "SERVER_PROTOCOL=HTTP/1.1", "SCRIPT_NAME=", "PATH_INFO=" + path,
			"REQUEST_URI=" + path + "?q=1", "QUERY_STRING=q=1", "HTTP_HOST=localhost", "HTTP_USER_AGENT=probe", "SERVER_NAME=localhost", "SERVER_PORT=80"}
	}
	res, out, log := runOnce(t, im, &machine.Request{Env: env("/hi/dust")})
	if err := res.Err(); err != nil || res.ExitStatus != 0 {
		t.Fatalf("%v status %d\n%s", err, res.ExitStatus, log)
	}
	if _, body := splitCGI(t, out); body != "hi dust, q=1 ua=probe\n" {
		t.Errorf("body %q", body)
	}
	res, out, _ = runOnce(t, im, &machine.Request{Env: env("/nowhere")})
	if h, _ := splitCGI(t, out); res.Err() != nil || !strings.Contains(h, "Status: 404") {
		t.Errorf("%v %q", res.Err(), out)
	}
}
