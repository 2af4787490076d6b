package cluster

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/store"
)

// fill sets every field of the struct v points to a value that is not its
// zero value, so that a field the shared record drops shows up as a
// difference. A field of a kind it does not know fails the test: whoever
// adds one extends fill, and with it this check.
func fill(t *testing.T, v reflect.Value, path string) {
	t.Helper()
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				fill(t, v.Field(i), path+"."+v.Type().Field(i).Name)
			}
		}
	case reflect.String:
		v.SetString("x" + strings.ToLower(path[strings.LastIndexByte(path, '.')+1:]))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(7 * time.Second)) // a Duration too
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(7)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(7.5)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := 0; i < 2; i++ {
			fill(t, s.Index(i), path)
		}
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k := reflect.New(v.Type().Key()).Elem()
		fill(t, k, path)
		e := reflect.New(v.Type().Elem()).Elem()
		fill(t, e, path)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(t, p.Elem(), path)
		v.Set(p)
	default:
		t.Fatalf("store.Settings%s: kind %v not filled by this test; extend fill", path, v.Kind())
	}
}

// TestSettingsReplicate checks that every field of store.Settings, the
// ones added after the cluster was written included, survives the shared
// record's JSON form: a setting that did not would be lost on every other
// node.
func TestSettingsReplicate(t *testing.T) {
	var set store.Settings
	fill(t, reflect.ValueOf(&set).Elem(), "")
	set.Files = "sha256:" + strings.Repeat("ab", 32) // decodeRecord checks it as a digest
	v := store.Version{Number: 1, Kind: store.KindWasm, Digest: "sha256:" + strings.Repeat("cd", 32), Size: 9,
		Settings: set, CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}
	vr, err := toRecord(v)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(appRecord{Name: "a", Last: 1, Current: 1, History: []versionRecord{vr}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := decodeRecord("app.a", b)
	if err != nil {
		t.Fatal(err)
	}
	a, err := rec.app()
	if err != nil {
		t.Fatal(err)
	}
	got := a.Current
	if !reflect.DeepEqual(got, v) {
		gs, ws := reflect.ValueOf(got.Settings), reflect.ValueOf(v.Settings)
		for i := 0; i < ws.NumField(); i++ {
			if !reflect.DeepEqual(gs.Field(i).Interface(), ws.Field(i).Interface()) {
				t.Errorf("store.Settings.%s does not replicate: sent %v, got %v", ws.Type().Field(i).Name, ws.Field(i), gs.Field(i))
			}
		}
		t.Fatalf("version does not round-trip through the shared record:\nsent %+v\ngot  %+v", v, got)
	}
}
