package hvt

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// readyGuest does slow start-up work, declares its ready point, then
// answers with what it sees of the request.
const readyGuest = `#include <stdio.h>
#include <stdlib.h>
#include <dust/dust.h>
static unsigned long table[4096];
static int inits;
int main(void)
{
	inits++;
	for (int i = 0; i < 4096; i++)
		table[i] = (unsigned long)i * 2654435761u;
	volatile unsigned long spin = 0;
	for (long i = 0; i < 30000000; i++)
		spin += i;
	char **argv;
	int argc = dust_ready(&argv);
	unsigned char r[8];
	dust_random(r, sizeof r);
	char body[64];
	size_t n = fread(body, 1, sizeof body - 1, stdin);
	body[n] = 0;
	const char *q = getenv("QUERY_STRING");
	printf("Content-Type: text/plain\r\n\r\ninits=%d argc=%d argv1=%s q=%s body=%s table=%lu rand=",
	       inits, argc, argc > 1 ? argv[1] : "", q ? q : "", body, table[4095]);
	for (int i = 0; i < 8; i++)
		printf("%02x", r[i]);
	printf("\n");
	inits += 100; /* a request's change: the next one must not see it */
	table[4095] = 0;
	return 0;
}
`

var readyOut = regexp.MustCompile(`inits=(\d+) argc=(\d+) argv1=(\S*) q=(\S*) body=(\S*) table=(\d+) rand=([0-9a-f]{16})`)

// A program with a ready point is snapshotted at Prepare: every request,
// on a fresh machine or a restored one, starts after the start-up work,
// sees its own request, its own random bytes, and none of the previous
// request's changes.
func TestSnapshotReadyPoint(t *testing.T) {
	im := prepareELF(t, cGuestELF(t, "ready", readyGuest), machine.Limits{})
	if !im.Snapshotted() {
		t.Fatal("the image calls dust_ready() but was not snapshotted")
	}
	plain := prepare(t, "hello", machine.Limits{})
	if plain.Snapshotted() {
		t.Fatal("hello has no ready point but was snapshotted")
	}
	seen := map[string]bool{}
	check := func(t *testing.T, mode string, i int, res machine.Result, out string) {
		t.Helper()
		if err := res.Err(); err != nil {
			t.Fatalf("%s %d: %v", mode, i, err)
		}
		m := readyOut.FindStringSubmatch(out)
		want := fmt.Sprintf("q%d", i)
		if m == nil || m[1] != "1" || m[2] != "2" || m[3] != want || m[4] != want || m[5] != "body"+want || m[6] != fmt.Sprint(uint64(4095)*2654435761) {
			t.Fatalf("%s %d: %q", mode, i, out)
		}
		if seen[m[7]] {
			t.Fatalf("%s %d: random bytes %s seen before", mode, i, m[7])
		}
		seen[m[7]] = true
	}
	req := func(i int) *machine.Request {
		q := fmt.Sprintf("q%d", i)
		body := "body" + q
		return &machine.Request{Args: []string{"/", q}, Env: []string{"QUERY_STRING=" + q, fmt.Sprintf("CONTENT_LENGTH=%d", len(body))},
			Body: strings.NewReader(body), BodyLen: int64(len(body))}
	}
	mm, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer mm.Close()
	var slowest time.Duration
	for i := range 50 {
		var out bytes.Buffer
		t0 := time.Now()
		res := mm.Run(context.Background(), req(i), &out, &bytes.Buffer{})
		took := time.Since(t0)
		slowest = max(slowest, took)
		check(t, "restore", i, res, out.String())
		if err := mm.Reset(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 50; i < 55; i++ {
		res, out, _ := runOnce(t, im, req(i))
		check(t, "fresh", i, res, out)
	}
	// The start-up spin takes tens of milliseconds at CPL3; a request
	// that redid it would show.
	t.Logf("slowest restored request %v", slowest)
}
