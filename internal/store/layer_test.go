package store

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	bolt "go.etcd.io/bbolt"
)

// writeTree makes files (path -> content; a path ending in "/" is a
// directory) under a new directory.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func packT(t *testing.T, dir string) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := PackDir(&b, dir); err != nil {
		t.Fatalf("PackDir: %v", err)
	}
	return b.Bytes()
}

var sampleTree = map[string]string{
	"main.lua":         "print('hi')\n",
	"lib/cgi.lua":      "return {}\n",
	"lib-b/x":          "x",
	"lib/deep/a/b.txt": strings.Repeat("b", 10000),
	"empty/":           "",
	"zero":             "",
}

// A directory packed, stored and read back is the same tree, through a
// file system that fstest finds correct and that refuses writes.
func TestLayerRoundTrip(t *testing.T) {
	s := openT(t, t.TempDir())
	dir := writeTree(t, sampleTree)
	d, info, err := s.PutLayer(bytes.NewReader(packT(t, dir)))
	if err != nil {
		t.Fatal(err)
	}
	if info.Files != 5 || info.Dirs != 5 || info.Bytes != 12+10+1+10000 {
		t.Errorf("info = %+v", info)
	}
	l, err := s.ReadLayer(d)
	if err != nil {
		t.Fatal(err)
	}
	if l.Info() != info {
		t.Errorf("ReadLayer info %+v, PutLayer said %+v", l.Info(), info)
	}
	var want []string
	for name, content := range sampleTree {
		if strings.HasSuffix(name, "/") {
			continue
		}
		want = append(want, name)
		got, err := fs.ReadFile(l, name)
		if err != nil || string(got) != content {
			t.Errorf("%s: %d bytes, %v; want %d bytes", name, len(got), err, len(content))
		}
	}
	if err := fstest.TestFS(l, want...); err != nil {
		t.Error(err)
	}
	fi, err := fs.Stat(l, "main.lua")
	if err != nil || fi.Mode().Perm()&0o222 != 0 || !fi.Mode().IsRegular() {
		t.Errorf("main.lua: mode %v, %v; want read-only regular", fi.Mode(), err)
	}
	if _, err := l.Open("../etc/passwd"); !errors.Is(err, fs.ErrInvalid) {
		t.Errorf("Open(../etc/passwd) = %v, want ErrInvalid", err)
	}
	if _, err := l.Open("/main.lua"); !errors.Is(err, fs.ErrInvalid) {
		t.Errorf("Open(/main.lua) = %v, want ErrInvalid", err)
	}
	// A copy handed out is the caller's.
	b, _ := l.ReadFile("main.lua")
	b[0] = 'X'
	if again, _ := l.ReadFile("main.lua"); again[0] != 'p' {
		t.Error("ReadFile returned the layer's own bytes")
	}
}

// The same files make the same digest whatever their times and modes,
// and a tar in another spelling of the same tree is stored canonically.
func TestLayerDeterministic(t *testing.T) {
	s := openT(t, t.TempDir())
	a := writeTree(t, sampleTree)
	b := writeTree(t, sampleTree)
	old := time.Now().Add(-48 * time.Hour)
	filepath.WalkDir(b, func(p string, _ fs.DirEntry, _ error) error {
		os.Chtimes(p, old, old)
		os.Chmod(p, 0o700)
		return nil
	})
	da, _, err := s.PutLayer(bytes.NewReader(packT(t, a)))
	if err != nil {
		t.Fatal(err)
	}
	db, _, err := s.PutLayer(bytes.NewReader(packT(t, b)))
	if err != nil || db != da {
		t.Fatalf("same files, other times and modes: %s, %v; want %s", db, err, da)
	}
	// Hand-written: "./" prefixes, owners, odd modes and times, PAX.
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	add := func(h *tar.Header, content string) {
		h.Uname, h.Uid, h.ModTime, h.Format = "alice", 1000, old, tar.FormatPAX
		if h.Mode == 0 {
			h.Mode = 0o600
		}
		h.Size = int64(len(content))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, content)
	}
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "./", Mode: 0o700}, "")
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "./empty/", Mode: 0o700}, "")
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "./lib"}, "")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "./lib/cgi.lua"}, sampleTree["lib/cgi.lua"])
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "lib/deep/"}, "")
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "lib/deep/a/"}, "")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "lib/deep/a/b.txt", Mode: 0o777}, sampleTree["lib/deep/a/b.txt"])
	add(&tar.Header{Typeflag: tar.TypeDir, Name: "lib-b/"}, "")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "lib-b/x"}, "x")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "main.lua"}, sampleTree["main.lua"])
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "zero"}, "")
	tw.Close()
	dc, _, err := s.PutLayer(&tb)
	if err != nil || dc != da {
		t.Fatalf("the same tree written otherwise: %s, %v; want %s", dc, err, da)
	}
	if n := len(imageFiles(t, s)); n != 1 {
		t.Errorf("%d blobs for one layer stored three times", n)
	}
}

type tarEntry struct {
	typ     byte
	name    string
	size    int64 // -1: len(content)
	content string
	link    string
}

func tarOf(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		size := e.size
		if size < 0 {
			size = int64(len(e.content))
		}
		h := &tar.Header{Typeflag: e.typ, Name: e.name, Size: size, Linkname: e.link, Mode: 0o644}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.content)
	}
	tw.Flush() // no Close: some cases are cut short on purpose
	return b.Bytes()
}

func file(name, content string) tarEntry {
	return tarEntry{typ: tar.TypeReg, name: name, size: -1, content: content}
}
func dir(name string) tarEntry { return tarEntry{typ: tar.TypeDir, name: name} }

// Every hostile layer is refused, saying which entry and which rule, and
// leaves nothing in the store.
func TestLayerRefused(t *testing.T) {
	s := openT(t, t.TempDir())
	var many []tarEntry
	for i := 0; i <= MaxLayerEntries; i++ {
		many = append(many, file(fmt.Sprintf("f%05d", i), ""))
	}
	deep := strings.Repeat("d/", MaxLayerDepth) + "f"
	var deepDirs []tarEntry
	for i := 1; i <= MaxLayerDepth; i++ {
		deepDirs = append(deepDirs, dir(strings.Repeat("d/", i)))
	}
	for _, tc := range []struct {
		name    string
		tar     []byte
		want    error
		message string
	}{
		{"dot-dot", tarOf(t, file("../escape", "x")), ErrBadLayer, `"../escape": a ".." element would climb out of /app`},
		{"inner dot-dot", tarOf(t, dir("a/"), file("a/../../etc/passwd", "x")), ErrBadLayer, `climb out of /app`},
		{"absolute", tarOf(t, file("/etc/passwd", "x")), ErrBadLayer, `"/etc/passwd": an absolute path`},
		{"symlink", tarOf(t, tarEntry{typ: tar.TypeSymlink, name: "passwd", link: "/etc/passwd"}), ErrBadLayer, `"passwd": is a symbolic link (to "/etc/passwd")`},
		{"hard link", tarOf(t, tarEntry{typ: tar.TypeLink, name: "h", link: "../x"}), ErrBadLayer, `is a hard link`},
		{"device", tarOf(t, tarEntry{typ: tar.TypeChar, name: "mem"}), ErrBadLayer, `"mem": is a device`},
		{"fifo", tarOf(t, tarEntry{typ: tar.TypeFifo, name: "p"}), ErrBadLayer, `is a FIFO`},
		{"unclean", tarOf(t, dir("a/"), file("a//b", "x")), ErrBadLayer, `not a clean path`},
		{"dot element", tarOf(t, dir("a/"), file("a/./b", "x")), ErrBadLayer, `not a clean path`},
		{"control", tarOf(t, file("a\nb", "x")), ErrBadLayer, `control character 0xa`},
		{"not utf-8", tarOf(t, file("a\xffb", "x")), ErrBadLayer, `not valid UTF-8`},
		{"duplicate", tarOf(t, file("a", "1"), file("a", "2")), ErrBadLayer, `"a": appears twice`},
		{"out of order", tarOf(t, file("b", "1"), file("a", "2")), ErrBadLayer, `"a": comes after "b"`},
		{"no parent", tarOf(t, file("dir/f", "1")), ErrBadLayer, `its directory "dir" is not in the layer before it`},
		{"file as parent", tarOf(t, file("a", "1"), file("a/b", "2")), ErrBadLayer, `its directory "a" is not in the layer before it`},
		{"long path", tarOf(t, file(strings.Repeat("p", MaxLayerPath+1), "")), ErrBadLayer, `at most 1024 allowed`},
		{"long element", tarOf(t, file(strings.Repeat("e", MaxLayerName+1), "")), ErrBadLayer, `an element of 256 bytes, at most 255 allowed`},
		{"deep", tarOf(t, append(deepDirs, file(deep, ""))...), ErrBadLayer, `33 directories deep, at most 32 allowed`},
		{"huge file", tarOf(t, tarEntry{typ: tar.TypeReg, name: "big", size: 1 << 40}), ErrLayerTooLarge, `more than 64 MiB of file content (at "big"`},
		{"huge in all", tarOf(t, tarEntry{typ: tar.TypeReg, name: "a", size: MaxLayerBytes / 2, content: strings.Repeat("a", MaxLayerBytes/2)},
			tarEntry{typ: tar.TypeReg, name: "b", size: MaxLayerBytes/2 + 1}), ErrLayerTooLarge, `(at "b"`},
		{"many", tarOf(t, many...), ErrLayerTooLarge, `more than 4096 files and directories`},
		{"truncated", tarOf(t, tarEntry{typ: tar.TypeReg, name: "cut", size: 5000, content: "only this"})[:1024], ErrBadLayer, `"cut": the stream ends`},
		{"not tar", []byte(strings.Repeat("this is not a tar stream ", 100)), ErrBadLayer, `not a tar stream`},
		{"unnamed file", tarOf(t, file(".", "x")), ErrBadLayer, `a file without a name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := s.PutLayer(bytes.NewReader(tc.tar))
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.message) {
				t.Errorf("PutLayer = %v; want %v saying %s", err, tc.want, tc.message)
			}
			if files := imageFiles(t, s); len(files) != 0 {
				t.Errorf("left behind: %v", files)
			}
		})
	}
}

// PackDir refuses what a layer cannot hold, naming the path.
func TestPackDirRefuses(t *testing.T) {
	d := writeTree(t, map[string]string{"ok.txt": "ok"})
	if err := os.Symlink("/etc/passwd", filepath.Join(d, "passwd")); err != nil {
		t.Fatal(err)
	}
	_, err := PackDir(io.Discard, d)
	if !errors.Is(err, ErrBadLayer) || !strings.Contains(err.Error(), filepath.Join(d, "passwd")+" is a symbolic link") {
		t.Errorf("symlink: %v", err)
	}
	if _, err := PackDir(io.Discard, filepath.Join(d, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing dir: %v", err)
	}
}

// A layer damaged on disk is refused on read, not mounted.
func TestReadLayerTampered(t *testing.T) {
	s := openT(t, t.TempDir())
	d, _, err := s.PutLayer(bytes.NewReader(packT(t, writeTree(t, map[string]string{"a": "hello"}))))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := s.imagePath(d)
	b, _ := os.ReadFile(p)
	i := bytes.Index(b, []byte("hello"))
	b[i] = 'j'
	os.Chmod(p, 0o600)
	if err := os.WriteFile(p, b, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadLayer(d); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("tampered layer: %v, want ErrDigestMismatch", err)
	}
	if _, err := s.ReadLayer("sha256:" + strings.Repeat("0", 64)); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing layer: %v", err)
	}
}

// Fixed args, query args and files are versioned settings: inherited by a
// patch that does not give them, restored by rollback; a deploy naming a
// layer that is not stored is refused; GC keeps a layer while a kept
// version uses it.
func TestLayerSettingsVersioned(t *testing.T) {
	s := openT(t, t.TempDir())
	img := putT(t, s, "image")
	layer, _, err := s.PutLayer(bytes.NewReader(packT(t, writeTree(t, map[string]string{"s.lua": "x"}))))
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"/app/s.lua", "--flag"}
	yes := true
	p := Patch{Args: &args, QueryArgs: &yes, Files: &layer}
	set, err := p.Apply(Settings{Route: "/a"})
	if err != nil {
		t.Fatal(err)
	}
	deployT(t, s, "a", img, set)
	route := "/b"
	set2, err := Patch{Route: &route}.Apply(set)
	if err != nil || !slices.Equal(set2.Args, args) || !set2.QueryArgs || set2.Files != layer {
		t.Fatalf("inherited settings = %+v, %v", set2, err)
	}
	none, empty := "", []string{}
	set3, _ := Patch{Files: &none, Args: &empty}.Apply(set2)
	set3 = set3.Normalize()
	if set3.Files != "" || set3.Args != nil || set3.Equal(set2) {
		t.Fatalf("dropped files and args: %+v", set3)
	}
	deployT(t, s, "a", img, set3)
	if removed, err := s.GCOlderThan(0); err != nil || len(removed) != 0 {
		t.Fatalf("GC removed %v (%v) while v1 uses the layer", removed, err)
	}
	a, err := s.Rollback("a")
	if err != nil || a.Current.Settings.Files != layer || !slices.Equal(a.Current.Settings.Args, args) || !a.Current.Settings.QueryArgs {
		t.Fatalf("rollback = %+v, %v", a.Current.Settings, err)
	}
	missing := "sha256:" + strings.Repeat("ab", 32)
	if _, err := s.Deploy("b", KindWasm, img, Settings{Route: "/b", Files: missing}); !errors.Is(err, ErrNotFound) {
		t.Errorf("deploy with a missing layer: %v", err)
	}
	if err := (Settings{Route: "/x", Files: "../../etc"}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("files=../../etc: %v", err)
	}
	if err := (Settings{Route: "/x", Args: []string{"a\x00b"}}).Validate(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "args[0]") {
		t.Errorf("NUL in an arg: %v", err)
	}
	if err := (Settings{Route: "/x", Args: make([]string, MaxArgs+1)}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("too many args: %v", err)
	}
	if err := (Settings{Route: "/x", Args: []string{strings.Repeat("a", MaxArgBytes)}}).Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("args too large: %v", err)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	removed, err := s.RemoveUnreferenced(img, layer)
	if err != nil || len(removed) != 2 {
		t.Errorf("after rm: removed %v, %v; want the image and the layer", removed, err)
	}
}

// A record written before args and files existed decodes to none, with
// query args off.
func TestLayerOldRecordDecodes(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir)
	img := putT(t, s, "image")
	old := `{"name":"old","current":1,"history":[{"number":1,"kind":"wasm","digest":"` + img +
		`","size":5,"settings":{"route":"/old","env":["A=1"]},"created_at":"2024-01-01T00:00:00Z"}]}`
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketApps).Put([]byte("old"), []byte(old)) }); err != nil {
		t.Fatal(err)
	}
	a, err := s.Get("old")
	if err != nil || a.Current.Settings.Args != nil || a.Current.Settings.QueryArgs || a.Current.Settings.Files != "" {
		t.Fatalf("old record: %+v, %v", a.Current.Settings, err)
	}
	// And a record with none of them set still writes none of them.
	b, _ := json.Marshal(toVersionRecord(a.Current))
	for _, k := range []string{"args", "query_args", "files"} {
		if bytes.Contains(b, []byte(`"`+k+`"`)) {
			t.Errorf("record without %s writes it: %s", k, b)
		}
	}
}

// FuzzLayer feeds arbitrary bytes to the layer reader. It must never
// panic, must refuse only with ErrBadLayer or ErrLayerTooLarge, and what
// it accepts must be canonical (reading it again gives the same bytes)
// and a file system of clean relative names.
func FuzzLayer(f *testing.F) {
	f.Add(tarOf(f, dir("a/"), file("a/b", "hello"), file("c", "")))
	f.Add(tarOf(f, file("../x", "x")))
	f.Add(tarOf(f, tarEntry{typ: tar.TypeSymlink, name: "l", link: "/"}))
	f.Add(tarOf(f, file("b", ""), file("a", "")))
	f.Add(tarOf(f, tarEntry{typ: tar.TypeReg, name: "big", size: 1 << 30}))
	var pax bytes.Buffer
	tw := tar.NewWriter(&pax)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.Repeat("n", 300), Size: 1, Format: tar.FormatPAX, PAXRecords: map[string]string{"comment": "x"}})
	tw.Write([]byte("y"))
	tw.Close()
	f.Add(pax.Bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		info, err := canonicalize(&out, bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrBadLayer) && !errors.Is(err, ErrLayerTooLarge) {
				t.Fatalf("refused with %v, neither ErrBadLayer nor ErrLayerTooLarge", err)
			}
			return
		}
		var again bytes.Buffer
		if info2, err := canonicalize(&again, bytes.NewReader(out.Bytes())); err != nil || info2 != info || !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatalf("canonical form is not a fixed point: %v, %+v vs %+v", err, info2, info)
		}
		l, err := newLayer(bytes.NewReader(out.Bytes()))
		if err != nil {
			t.Fatalf("canonical form does not load: %v", err)
		}
		if l.Info() != info || info.Bytes > MaxLayerBytes || info.Files+info.Dirs > MaxLayerEntries {
			t.Fatalf("info %+v vs %+v", l.Info(), info)
		}
		for name := range l.nodes {
			if !fs.ValidPath(name) || strings.HasPrefix(name, "/") || strings.Contains("/"+name+"/", "/../") {
				t.Fatalf("accepted name %q", name)
			}
		}
	})
}
