package bench

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
)

// wellFormed parses svg completely and returns its element names.
func wellFormed(t *testing.T, svg []byte) map[string]int {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	names := map[string]int{}
	root := ""
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, svg)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
				if se.Name.Space != "http://www.w3.org/2000/svg" {
					t.Errorf("root namespace %q", se.Name.Space)
				}
			}
			names[se.Name.Local]++
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	return names
}

func TestBoxChartSVG(t *testing.T) {
	c := BoxChart{Title: `latency <p50> & "tails"`, Unit: "µs", Caption: "a < b", Boxes: []Box{
		{Label: "hvt <pool>", Lo: 50, Q1: 70, Mid: 82, Q3: 100, Hi: 346},
		{Label: "qemu & co", Lo: 40000, Q1: 50000, Mid: 61000, Q3: 70000, Hi: 90000},
	}}
	names := wellFormed(t, c.SVG())
	if names["rect"] < 3 { // background + two boxes
		t.Errorf("rects: %d", names["rect"])
	}
	if !strings.Contains(string(c.SVG()), "hvt &lt;pool&gt;") {
		t.Error("label not escaped")
	}
	wellFormed(t, BoxChart{Title: "empty"}.SVG())
}

func TestLineChartSVG(t *testing.T) {
	c := LineChart{Title: "rps", XLabel: "clients", YLabel: "req/s", LogX: true, LogY: true, Series: []Series{
		{Name: "hvt", X: []float64{1, 4, 16, 64, 256}, Y: []float64{500, 800, 887, 870, 860}},
		{Name: "plain", X: []float64{1, 4, 16, 64, 256}, Y: []float64{20000, 60000, 79000, 78000, 70000}},
	}}
	names := wellFormed(t, c.SVG())
	if names["polyline"] != 2 || names["circle"] != 10 {
		t.Errorf("polylines %d circles %d", names["polyline"], names["circle"])
	}
	lin := LineChart{Title: "linear", Series: []Series{{Name: "a", X: []float64{0, 1, 2}, Y: []float64{0, 3, 1}}}}
	wellFormed(t, lin.SVG())
	wellFormed(t, LineChart{Title: "empty", LogX: true, LogY: true}.SVG())
	if strings.Contains(string(lin.SVG()), "NaN") || strings.Contains(string(c.SVG()), "NaN") {
		t.Error("NaN coordinate in output")
	}
}

func TestAxis(t *testing.T) {
	a := axis{lo: 10, hi: 1000, from: 0, to: 200, log: true}
	if got := a.px(100); math.Abs(got-100) > 1e-9 {
		t.Errorf("log midpoint at %v", got)
	}
	lo, hi := logRange(23, 7400)
	if lo != 20 || hi != 10000 {
		t.Errorf("logRange = %v, %v", lo, hi)
	}
	if got := fmtNum(2000); got != "2k" {
		t.Errorf("fmtNum(2000) = %q", got)
	}
	if got := fmtNum(0.5); got != "0.5" {
		t.Errorf("fmtNum(0.5) = %q", got)
	}
}
