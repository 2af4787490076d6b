package wasm

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/machine"
)

// drawn serves n requests of the go-rand example and counts the distinct
// values of each field it prints.
func drawn(t *testing.T, im *Image, n int) map[string]int {
	t.Helper()
	seen := map[string]map[string]bool{}
	for i := 0; i < n; i++ {
		res, out, log := runOnce(t, im, nil)
		if res.Err() != nil || res.ExitStatus != 0 {
			t.Fatalf("request %d: %v status %d\n%s", i, res.Err(), res.ExitStatus, log)
		}
		_, body := splitCGI(t, out)
		for _, f := range strings.Fields(body) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				t.Fatalf("request %d: %q", i, body)
			}
			if seen[k] == nil {
				seen[k] = map[string]bool{}
			}
			seen[k][v] = true
		}
	}
	counts := map[string]int{}
	for k, vs := range seen {
		counts[k] = len(vs)
	}
	return counts
}

// The app over 200 requests of one deploy: math/rand/v2, math/rand
// and crypto/rand draw uniform 63- or 64-bit values, so any repeat among
// 200 (probability below 2^-47) is a replay. A 16-entry map's iteration
// order is not uniform over 16! orders: a million orders drawn natively
// held 213 colliding pairs, so among 200 a repeat has probability about
// 1e-5; one is tolerated, two (about 1e-11) are not.
func TestGoReactorRandomnessIsFresh(t *testing.T) {
	im := prepare(t, "go-rand", machine.Limits{})
	if len(im.randRegions) != 2 || im.randRegions[0].size != 288 || im.randRegions[1].size != 8 {
		t.Errorf("random state %+v, want the M's chacha8 buffer and seed (288 bytes) and its cheaprand (8)", im.randRegions)
	}
	const n = 200
	got := drawn(t, im, n)
	want := map[string]int{"mrand2": n, "mrand": n, "order": n - 1, "crypto": n}
	for k, w := range want {
		t.Logf("%s: %d distinct in %d requests", k, got[k], n)
		if got[k] < w {
			t.Errorf("%s: %d distinct values in %d requests, want at least %d", k, got[k], n, w)
		}
	}

	// The control: without the reseed, the same image replays all but
	// crypto/rand, which is what the test above would have caught.
	regions := im.randRegions
	im.randRegions = nil
	defer func() { im.randRegions = regions }()
	got = drawn(t, im, 20)
	if got["mrand2"] != 1 || got["mrand"] != 1 || got["order"] != 1 || got["crypto"] != 20 {
		t.Errorf("without the reseed, distinct values in 20 requests: %v; want 1 but for crypto's 20", got)
	}
}

// A Go reactor that does not report its random state is refused, whoever
// made its dust_serve.
func TestGoReactorWithoutRandStateRefused(t *testing.T) {
	_, err := Prepare(buildReactor(t, "testdata/gonorand"), machine.Limits{}, testOptions)
	if !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), RandStateExport) || !strings.Contains(err.Error(), "replay") {
		t.Fatalf("error %v, want ErrBadImage naming %s and the replay", err, RandStateExport)
	}
}

// randReactor is reactorModule with a RandStateExport that returns ret and
// desc as a data segment at descAt.
func randReactor(ret int32, desc ...uint32) *binModule {
	m := reactorModule()
	fn := func(body []byte) []byte {
		return append(appendU32(nil, uint32(len(body)+1)), append([]byte{0}, body...)...)
	}
	// Appends an item to a section that is a vector of items.
	add := func(id byte, item []byte) {
		body, _ := m.section(id)
		r := &reader{b: body}
		n := r.u32()
		m.setSection(id, cat(appendU32(nil, n+1), body[r.off:], item))
	}
	var d []byte
	for _, w := range desc {
		d = binary.LittleEndian.AppendUint32(d, w)
	}
	add(secFunction, []byte{1})
	add(secCode, fn(cat(i32c(ret), []byte{0x0b})))
	add(secExport, cat(wname(RandStateExport), []byte{kindFunc, 2}))
	add(secData, cat([]byte{0}, i32c(descAt), []byte{0x0b}, appendU32(nil, uint32(len(d))), d))
	m.setSection(secDataCount, []byte{2})
	return m
}

const descAt = 3000

// The host side alone, on a hand-made reactor: the region it reports is
// the word dust_serve adds to its status (at 1000), so the status is 149
// without a reseed and random with one; the export is gone from the
// snapshot.
func TestRandStateHandMade(t *testing.T) {
	im := prepareBytes(t, randReactor(descAt, 1, 1, 1000, 4).encode(), machine.Limits{}, testOptions)
	if _, ok := im.compiled.ExportedFunctions()[RandStateExport]; ok {
		t.Errorf("the snapshot still exports %s", RandStateExport)
	}
	if len(im.randRegions) != 1 || im.randRegions[0] != (randRegion{1000, 4}) {
		t.Fatalf("regions %+v", im.randRegions)
	}
	seen := map[int]bool{}
	for range 20 {
		res, _, _ := runOnce(t, im, nil)
		if res.Outcome != machine.Served {
			t.Fatal(res.Err())
		}
		seen[res.ExitStatus] = true
	}
	// 20 uniform 32-bit values repeat with probability below 1e-7.
	if len(seen) != 20 || seen[149] {
		t.Errorf("statuses %v, want 20 distinct", seen)
	}
}

func TestRandStateRefused(t *testing.T) {
	cases := []struct {
		name string
		m    *binModule
		want string
	}{
		{"not located", randReactor(0), "could not locate"},
		{"version", randReactor(descAt, 2, 1, 1000, 4), "version 2"},
		{"no regions", randReactor(descAt, 1, 0), "0 regions"},
		{"too many regions", randReactor(descAt, 1, maxRandRegions+1), "regions"},
		{"empty region", randReactor(descAt, 1, 1, 1000, 0), "0 bytes"},
		{"too many bytes", randReactor(descAt, 1, 1, 1000, maxRandStateBytes+1), "at most"},
		{"outside memory", randReactor(descAt, 1, 1, 2*pageSize-2, 4), "outside"},
		{"descriptor outside memory", randReactor(2*pageSize - 2), "past the end"},
		{"descriptor wrapping round", randReactor(-4, 1, 1, 1000, 4), "past the end"},
		{"Go without the export", withCustom(reactorModule(), "producers", cat(appendU32(nil, 1), wname("language"), appendU32(nil, 1), wname("Go"), wname("go1.26"))), RandStateExport},
		{"Go build ID without the export", withCustom(reactorModule(), "go:buildid", []byte("x")), RandStateExport},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Prepare(c.m.encode(), machine.Limits{}, testOptions)
			if !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want ErrBadImage mentioning %q", err, c.want)
			}
		})
	}
}

func withCustom(m *binModule, name string, body []byte) *binModule {
	m.sections = append(m.sections, binSection{id: secCustom, body: cat(wname(name), body)})
	return m
}

func TestGoProducer(t *testing.T) {
	if goProducer(reactorModule()) {
		t.Error("the hand-made reactor taken for Go")
	}
	if !goProducer(withCustom(reactorModule(), "producers", cat(appendU32(nil, 2), wname("processed-by"), appendU32(nil, 1), wname("x"), wname("1"), wname("language"), appendU32(nil, 2), wname("C"), wname(""), wname("Go"), wname("go1.26")))) {
		t.Error("a producers section listing Go second not recognised")
	}
	// Stripped of custom sections, a Go module still has Go's registers.
	b, err := parseBinary(exampleWasm(t, "go-fast-hello"))
	if err != nil {
		t.Fatal(err)
	}
	kept := b.sections[:0:0]
	for _, s := range b.sections {
		if s.id != secCustom {
			kept = append(kept, s)
		}
	}
	b.sections = kept
	if !goProducer(b) {
		t.Error("a stripped Go module not recognised")
	}
}
