package store

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

// A patch changes what it names and nothing else; env merges.
func TestPatchApply(t *testing.T) {
	base := Settings{Route: "/my", Timeout: 2 * time.Second, Memory: 16 << 20, Env: []string{"A=1", "B=2"}}
	got, err := Patch{SetEnv: []string{"B=3", "C="}}.Apply(base)
	if err != nil {
		t.Fatal(err)
	}
	want := Settings{Route: "/my", Timeout: 2 * time.Second, Memory: 16 << 20, Env: []string{"A=1", "B=3", "C="}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Apply = %+v, want %+v", got, want)
	}
	if base.Env[1] != "B=2" {
		t.Error("Apply changed its base's env")
	}
	got, err = Patch{Timeout: ptr(time.Duration(0)), UnsetEnv: []string{"A"}, Host: ptr("x.example")}.Apply(base)
	if err != nil || got.Timeout != 0 || got.Host != "x.example" || !reflect.DeepEqual(got.Env, []string{"B=2"}) || got.Memory != 16<<20 {
		t.Errorf("Apply = %+v, %v", got, err)
	}
	if _, err := (Patch{UnsetEnv: []string{"NOPE"}}).Apply(base); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "NOPE is not set") {
		t.Errorf("unsetting what is not set: %v", err)
	}
	if !want.Equal(want) || want.Equal(base) || (Settings{Route: "/a"}).Equal(Settings{Route: "/a", QueueLen: -1}) {
		t.Error("Equal is wrong")
	}
}

// Secrets live apart from versions, go with the app, and refuse a name
// that is also an env variable.
func TestSecrets(t *testing.T) {
	s := openT(t, t.TempDir())
	d := putT(t, s, "one")
	if _, err := s.ChangeSecrets("nope", SecretChange{Set: map[string]string{"A": "x"}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("secrets of a missing app: %v", err)
	}
	a, err := s.DeployWithSecrets("app", KindWasm, d, Settings{Route: "/app", Env: []string{"PLAIN=1"}}, SecretChange{Set: map[string]string{"PASS": "hunter2"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.Join(a.Current.Settings.Env, ","), "hunter2") {
		t.Error("the secret is in the version's settings")
	}
	if _, err := s.ChangeSecrets("app", SecretChange{Set: map[string]string{"PLAIN": "x"}}); !errors.Is(err, ErrConflict) {
		t.Errorf("a secret named like an env variable: %v", err)
	}
	names, err := s.ChangeSecrets("app", SecretChange{Set: map[string]string{"KEY": "k"}})
	if err != nil || !reflect.DeepEqual(names, []string{"KEY", "PASS"}) {
		t.Errorf("names = %v, %v", names, err)
	}
	if _, err := s.ChangeSecrets("app", SecretChange{Unset: []string{"GONE"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("removing a missing secret: %v", err)
	}
	m, _ := s.Secrets("app")
	if m["PASS"] != "hunter2" || m["KEY"] != "k" {
		t.Errorf("Secrets = %v", m)
	}
	if err := s.Delete("app"); err != nil {
		t.Fatal(err)
	}
	deployT(t, s, "app", d, Settings{Route: "/app"})
	if m, _ := s.Secrets("app"); len(m) != 0 {
		t.Errorf("a removed app's secrets came back: %v", m)
	}
}

func TestRollbackTo(t *testing.T) {
	s := openT(t, t.TempDir())
	d1, d2, d3 := putT(t, s, "one"), putT(t, s, "two"), putT(t, s, "three")
	deployT(t, s, "app", d1, Settings{Route: "/one"})
	deployT(t, s, "app", d2, Settings{Route: "/two"})
	deployT(t, s, "app", d3, Settings{Route: "/three"})
	a, err := s.RollbackTo("app", 1)
	if err != nil || a.Current.Number != 1 || a.Current.Digest != d1 || a.Current.Settings.Route != "/one" {
		t.Fatalf("RollbackTo 1: %+v, %v", a.Current, err)
	}
	for _, n := range []int{1, 7} {
		if _, err := s.RollbackTo("app", n); !errors.Is(err, ErrInvalid) {
			t.Errorf("RollbackTo %d: %v", n, err)
		}
	}
}
