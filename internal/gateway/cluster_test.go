package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/cluster"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
)

// fakeCluster knows apps this node has not prepared and "forwards" to a
// node that answers with what it received; its first offers find no node
// free.
type fakeCluster struct {
	known map[string]store.Settings
	mu    sync.Mutex
	busy  int // offers left that find no free node
	got   []string
}

func (f *fakeCluster) Name() string { return "a" }
func (f *fakeCluster) Deploy(context.Context, cluster.DeployRequest) (cluster.Update, error) {
	return cluster.Update{}, errors.New("not in this test")
}
func (f *fakeCluster) Rollback(context.Context, string, int, int) (cluster.Update, error) {
	return cluster.Update{}, errors.New("not in this test")
}
func (f *fakeCluster) Remove(context.Context, string, int) (cluster.Update, error) {
	return cluster.Update{}, errors.New("not in this test")
}
func (f *fakeCluster) ChangeSecrets(context.Context, string, int, store.SecretChange) (cluster.Update, error) {
	return cluster.Update{}, errors.New("not in this test")
}
func (f *fakeCluster) FetchImage(context.Context, string) error {
	return errors.New("not in this test")
}
func (f *fakeCluster) Status(context.Context) cluster.Status { return cluster.Status{Node: "a"} }
func (f *fakeCluster) Known() map[string]store.Settings      { return f.known }

func (f *fakeCluster) Forward(ctx context.Context, app string, r *http.Request, id string, body io.Reader, w http.ResponseWriter) (cluster.Forwarded, error) {
	// As the real one: the first chunk is read before a node is asked.
	first := make([]byte, 4)
	k, _ := io.ReadFull(body, first)
	f.mu.Lock()
	if f.busy > 0 {
		f.busy--
		f.mu.Unlock()
		return cluster.Forwarded{Unread: first[:k]}, cluster.ErrNoCapacity
	}
	f.mu.Unlock()
	rest, err := io.ReadAll(body)
	if err != nil {
		return cluster.Forwarded{BodyErr: err}, err
	}
	f.mu.Lock()
	f.got = append(f.got, app+" "+r.URL.Path+" "+string(first[:k])+string(rest))
	f.mu.Unlock()
	w.Header().Set(NodeHeader, "b")
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, "served by b\n")
	return cluster.Forwarded{Node: "b", Committed: true, Status: http.StatusCreated}, nil
}

// TestUnreadyForwarded: a request for an app the shared state has but this
// node has not prepared goes to a node that has it ready (waiting while
// none is free), its body intact; a path no app of the cluster routes
// still answers 404.
func TestUnreadyForwarded(t *testing.T) {
	fc := &fakeCluster{busy: 3, known: map[string]store.Settings{
		"remote": {Route: "/remote"},
		"deeper": {Route: "/remote/deeper"},
		"hosted": {Route: "/remote", Host: "example.test"},
	}}
	s, err := New(Config{DataDir: t.TempDir(), Kinds: map[string]machine.Kind{}, Detect: detect,
		Logger: testLogger(), ShutdownGrace: time.Second, Cluster: fc})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pub, _ := s.HTTPServers("", "")
	lp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go pub.Serve(Listener(lp))
	defer pub.Close()
	base := "http://" + lp.Addr().String()

	resp, err := http.Post(base+"/remote/x", "text/plain", strings.NewReader("hello body"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || string(b) != "served by b\n" || resp.Header.Get(NodeHeader) != "b" {
		t.Fatalf("unready app: %d %q node %q", resp.StatusCode, b, resp.Header.Get(NodeHeader))
	}
	for _, c := range []struct{ host, path, want string }{
		{"", "/remote/deeper/y", "deeper /remote/deeper/y "},
		{"example.test", "/remote/z", "hosted /remote/z "},
	} {
		req, _ := http.NewRequest("GET", base+c.path, nil)
		if c.host != "" {
			req.Host = c.host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		fc.mu.Lock()
		last := fc.got[len(fc.got)-1]
		fc.mu.Unlock()
		if resp.StatusCode != http.StatusCreated || last != c.want {
			t.Errorf("%s%s went to %q (%d), want %q", c.host, c.path, last, resp.StatusCode, c.want)
		}
	}
	fc.mu.Lock()
	first := fc.got[0]
	fc.mu.Unlock()
	if first != "remote /remote/x hello body" {
		t.Errorf("forwarded %q after three offers found no node: the body lost its start?", first)
	}
	resp, err = http.Get(base + "/elsewhere")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("a path no app routes: %d, want 404", resp.StatusCode)
	}
}
