package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
)

type part struct{ name, body string }

// putParts sends a multipart deploy body.
func (ts *testServer) putParts(t *testing.T, path string, parts ...part) (int, string) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, p := range parts {
		w, _ := mw.CreateFormFile(p.name, p.name)
		w.Write([]byte(p.body))
	}
	mw.Close()
	resp, body := get(t, "PUT", ts.admin+path, &b, "Authorization", "Bearer "+ts.Token(), "Content-Type", mw.FormDataContentType())
	var e struct{ Error string }
	json.Unmarshal([]byte(body), &e)
	return resp.StatusCode, e.Error
}

func layerTar(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644)
	}
	var b bytes.Buffer
	if _, err := store.PackDir(&b, dir); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// A multipart deploy carries an image and a files layer in either order;
// a body that is neither well framed nor complete is refused with 400
// saying what is wrong, and what it uploaded is given back.
func TestDeployBodyParts(t *testing.T) {
	ts := start(t, t.TempDir())
	img := string(example(t, "hello"))
	layer := layerTar(t, map[string]string{"a.txt": "a"})
	if code, msg := ts.putParts(t, "/v1/apps/a", part{"image", img}, part{"files", layer}); code != 200 {
		t.Fatalf("image then files: %d %s", code, msg)
	}
	a, _ := ts.Store().Get("a")
	if a.Current.Settings.Files == "" {
		t.Fatal("the files part was not deployed")
	}
	for _, tc := range []struct {
		path  string
		parts []part
		want  string
	}{
		{"/v1/apps/b", []part{{"files", layer}}, `has no "image" part`},
		{"/v1/apps/b", []part{{"image", img}, {"image", img}}, `two "image" parts`},
		{"/v1/apps/b", []part{{"script", "x"}, {"image", img}}, `part "script": want "image" and, optionally, "files"`},
		{"/v1/apps/b?files=", []part{{"files", layer}, {"image", img}}, `files= and a files part`},
		{"/v1/apps/b?files=../../x", []part{{"image", img}}, `files="../../x": want a files layer digest`},
		{"/v1/apps/b?arg=x&no_args=true", []part{{"image", img}}, `arg= and no_args=true together`},
		{"/v1/apps/b?query_args=perhaps", []part{{"image", img}}, `query_args="perhaps": want true or false`},
	} {
		if code, msg := ts.putParts(t, tc.path, tc.parts...); code != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
			t.Errorf("%s %v: %d %q; want 400 saying %s", tc.path, names(tc.parts), code, msg, tc.want)
		}
	}
	// Only a's image and layer are left.
	entries, _ := os.ReadDir(filepath.Join(ts.Store().Dir(), "images", "sha256"))
	if len(entries) != 2 {
		t.Errorf("%d blobs after refused deploys, want a's 2", len(entries))
	}
	// A layer given by digest must be stored.
	missing := "sha256:" + strings.Repeat("0", 64)
	if code, msg := ts.putParts(t, "/v1/apps/b?files="+missing, part{"image", img}); code != 404 || !strings.Contains(msg, "not found") {
		t.Errorf("files=<missing digest>: %d %q", code, msg)
	}
	if _, err := ts.Store().Get("b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("refused deploys made app b: %v", err)
	}
}

func names(ps []part) []string {
	var n []string
	for _, p := range ps {
		n = append(n, p.name)
	}
	return n
}

// nofiles is a kind that cannot mount files.
type nofiles struct{ machine.Kind }

func (nofiles) Name() string { return "nofiles" }

// A kind without files support refuses files rather than run an app
// without the files it was deployed with.
func TestPrepareRefusesFilesForKindWithout(t *testing.T) {
	_, err := machine.Prepare(nofiles{}, nil, machine.Limits{}, fstest.MapFS{})
	if !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), "cannot mount an app's files at /app") {
		t.Errorf("Prepare with files on a kind without: %v", err)
	}
}
