package gateway

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/store"
)

// TestStatusPageInBrowser loads the status page in headless Chromium
// (Debian's chromium package) and checks what it rendered: the apps with
// their figures and isolation modes, and the recent errors inserted as text, never as markup.
func TestStatusPageInBrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("DUST_REQUIRE_BROWSER") == "1" {
			t.Fatal("DUST_REQUIRE_BROWSER=1 but chromium is not installed")
		}
		t.Skip("chromium not installed (apt-get install chromium)")
	}
	ts := start(t, t.TempDir())
	ts.deploy(t, "hello", example(t, "hello"), store.Settings{Route: "/hello"})
	ts.deploy(t, "crash", example(t, "crash"), store.Settings{Route: "/crash", Isolation: "fresh"})
	for i := 0; i < 3; i++ {
		get(t, "GET", ts.url+"/hello", nil)
	}
	get(t, "GET", ts.url+"/crash", nil, "X-Request-Id", "evil<img src=x onerror=alert(1)>")
	get(t, "GET", ts.url+"/crash", nil, "X-Request-Id", "plain-id-7")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000", "--dump-dom",
		ts.admin+"/#token="+ts.Token())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	for _, want := range []string{"<td>hello</td>", "<td>crash</td>", "<td>/hello</td>", "<td>plain-id-7</td>", "<td>502</td>", "updated ",
		"<td>restore</td>", "<td>fresh</td>"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	if strings.Contains(dom, "<img") || strings.Contains(dom, "evil") && !strings.Contains(dom, "evil&lt;img") {
		t.Errorf("request id became markup:\n%s", dom)
	}
	if !strings.Contains(dom, `<p id="err"></p>`) {
		t.Error("the page shows an error (token refused?)")
	}
}
