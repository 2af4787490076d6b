package cluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/store"
)

// fakeLocal is a gateway stand-in: a store, a record of what was applied,
// and an echo handler behind one slot.
type fakeLocal struct {
	st      *store.Store
	mu      sync.Mutex
	applied []Update
	slot    chan struct{}
}

func (f *fakeLocal) Store() *store.Store { return f.st }
func (f *fakeLocal) MaxImageSize() int64 { return 1 << 20 }
func (f *fakeLocal) Apply(u Update) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, u)
	return nil
}
func (f *fakeLocal) Free() []string {
	if len(f.slot) < cap(f.slot) {
		return []string{"echo"}
	}
	return nil
}
func (f *fakeLocal) Load() (int, int, map[string]int) {
	return len(f.slot), cap(f.slot), map[string]int{}
}
func (f *fakeLocal) Admit(app string) (func(http.ResponseWriter, *http.Request), bool) {
	select {
	case f.slot <- struct{}{}:
	default:
		return nil, false
	}
	return func(w http.ResponseWriter, r *http.Request) {
		defer func() { <-f.slot }()
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(499)
			return
		}
		w.Header().Set("X-Len", r.Header.Get("Content-Length"))
		w.WriteHeader(201)
		// Echo the body twice: a response larger than the request.
		w.Write(body)
		w.Write(body)
	}, true
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startNode(t *testing.T) (*Node, *fakeLocal) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	n, err := Start(Config{Name: "solo", Listen: freePort(t), DataDir: t.TempDir(), MaxMemory: 16 << 20, MaxStore: 256 << 20,
		Logger: slog.New(slog.NewTextHandler(testLogOut, &slog.HandlerOptions{Level: slog.LevelDebug})), JoinTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	local := &fakeLocal{st: st, slot: make(chan struct{}, 1)}
	if err := n.Run(local); err != nil {
		t.Fatal(err)
	}
	return n, local
}

func TestDeployReplicatesAndNumbers(t *testing.T) {
	n, local := startNode(t)
	img := []byte("\x00asm not really")
	d, _, err := local.st.PutImage(bytes.NewReader(img), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	u, err := n.Deploy(ctx, DeployRequest{Name: "echo", Kind: store.KindWasm, Digest: d, Size: int64(len(img)),
		Settings: store.Settings{Route: "/echo"}, Secrets: store.SecretChange{Set: map[string]string{"K": "v"}}})
	if err != nil || u.App == nil || u.App.Current.Number != 1 || u.Secrets["K"] != "v" {
		t.Fatalf("deploy: %+v %v", u, err)
	}
	// A second deploy from a stale view is refused, not lost.
	if _, err := n.Deploy(ctx, DeployRequest{Name: "echo", Kind: store.KindWasm, Digest: d, Settings: store.Settings{Route: "/echo"}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale deploy: %v, want ErrConflict", err)
	}
	u2, err := n.Deploy(ctx, DeployRequest{Name: "echo", Kind: store.KindWasm, Digest: d, Settings: store.Settings{Route: "/echo"}, Expect: 1})
	if err != nil || u2.App.Current.Number != 2 {
		t.Fatalf("second deploy: %+v %v", u2, err)
	}
	if _, err := n.Remove(ctx, "echo", 2); err != nil {
		t.Fatal(err)
	}
	// Numbers go on after a removal.
	u3, err := n.Deploy(ctx, DeployRequest{Name: "echo", Kind: store.KindWasm, Digest: d, Settings: store.Settings{Route: "/echo"}})
	if err != nil || u3.App.Current.Number != 3 || len(u3.App.History) != 1 {
		t.Fatalf("deploy after rm: %+v %v", u3, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		local.mu.Lock()
		k := len(local.applied)
		var last Update
		if k > 0 {
			last = local.applied[k-1]
		}
		local.mu.Unlock()
		if last.App != nil && last.App.Current.Number == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watch applied %d updates, last %+v", k, last)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

func TestForwardLargeBodies(t *testing.T) {
	n, _ := startNode(t)
	// Wait for the placement loop to join the queue group.
	body := bytes.Repeat([]byte("0123456789abcdef"), 3*chunkSize/16+7) // > 3 chunks
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := httptest.NewRequest("POST", "/echo/x", bytes.NewReader(body))
		r.RequestURI = "/echo/x"
		w := httptest.NewRecorder()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := n.Forward(ctx, "echo", r, "id1", bytes.NewReader(body), w)
		cancel()
		if errors.Is(err, ErrNoCapacity) && time.Now().Before(deadline) {
			if len(res.Unread) != chunkSize {
				t.Fatalf("no capacity, %d bytes given back, want %d", len(res.Unread), chunkSize)
			}
			time.Sleep(20 * time.Millisecond) // polling interval
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		want := append(append([]byte(nil), body...), body...)
		if res.Node != "solo" || w.Code != 201 || !bytes.Equal(w.Body.Bytes(), want) || res.Cut {
			t.Fatalf("forwarded: %+v code %d, %d bytes back (want %d)", res, w.Code, w.Body.Len(), len(want))
		}
		return
	}
}

var testLogOut io.Writer = io.Discard
