package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dust-run/dust/internal/gateway"
	"github.com/dust-run/dust/internal/machine"
)

// adminClient talks to a running `dust serve` through its admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

var errAdmin = errors.New("admin API error")

// adminFlags adds the flags every admin command shares.
func adminFlags(fs *flag.FlagSet) func() (*adminClient, error) {
	addr := fs.String("admin", envOr("DUST_ADMIN", "127.0.0.1:8081"), "admin API `address` (env DUST_ADMIN)")
	data := fs.String("data", defaultDataDir(), "data `directory` holding admin.token (env DUST_TOKEN overrides)")
	return func() (*adminClient, error) {
		tok := os.Getenv("DUST_TOKEN")
		if tok == "" {
			b, err := os.ReadFile(filepath.Join(*data, gateway.TokenFile))
			if err != nil {
				return nil, fmt.Errorf("no admin token: set DUST_TOKEN or -data (%v)", err)
			}
			tok = strings.TrimSpace(string(b))
		}
		base := *addr
		if !strings.Contains(base, "://") {
			base = "http://" + base
		}
		return &adminClient{base: strings.TrimSuffix(base, "/"), token: tok, http: &http.Client{}}, nil
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (c *adminClient) do(method, path string, body io.Reader, out io.Writer) error {
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v (is `dust serve` running?)", errAdmin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &adminError{status: resp.StatusCode, msg: e.Error}
	}
	_, err = io.Copy(out, resp.Body)
	return err
}

type adminError struct {
	status int
	msg    string
}

func (e *adminError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.msg, e.status) }
func (e *adminError) Unwrap() error { return errAdmin }

// adminExit maps admin API statuses to exit codes.
func adminExit(err error) int {
	var ae *adminError
	if errors.As(err, &ae) {
		switch ae.status {
		case http.StatusUnauthorized:
			return exitUnavailable
		case http.StatusUnprocessableEntity:
			return exitBadImage
		case http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge:
			return exitUsage
		case http.StatusNotFound:
			return exitNotFound
		}
	}
	if errors.Is(err, errAdmin) {
		return exitUnavailable
	}
	return exitCode(err)
}

func cmdAdmin(name string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dust "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := adminFlags(fs)
	var (
		route, host, timeout, queueWait string
		isolation                       string
		memory, maxBody                 = sizeFlag(0), sizeFlag(0)
		maxConc, queueLen               int
		passAuth, follow                bool
		env                             listFlag
	)
	if name == "deploy" {
		fs.StringVar(&route, "route", "", "path prefix (default /NAME)")
		fs.StringVar(&host, "host", "", "only serve requests for this Host")
		fs.Var(&memory, "memory", "guest memory `size` (e.g. 32MiB)")
		fs.StringVar(&timeout, "timeout", "", "per-request `deadline` (e.g. 5s)")
		fs.IntVar(&maxConc, "max-concurrency", 0, "live machines for this app")
		fs.IntVar(&queueLen, "queue-len", 0, "requests that may wait for a machine")
		fs.StringVar(&queueWait, "queue-wait", "", "longest wait in the queue (e.g. 2s)")
		fs.Var(&maxBody, "max-body", "largest request body (`size`)")
		fs.BoolVar(&passAuth, "pass-authorization", false, "pass the Authorization header to the app")
		fs.Var(&env, "env", "app environment `KEY=VALUE` (repeatable)")
		fs.StringVar(&isolation, "isolation", "", "isolation `mode`: restore (default: a machine is reset and reused after a clean request) or fresh (a new machine per request)")
	}
	if name == "logs" {
		fs.BoolVar(&follow, "f", false, "follow new lines")
	}
	pos, code, ok := parseInterleaved(fs, args)
	if !ok {
		return code
	}
	want := map[string]int{"deploy": 2, "apps": 0, "app": 1, "rollback": 1, "rm": 1, "logs": 1}[name]
	if len(pos) != want {
		fmt.Fprintf(stderr, "dust %s: want %d arguments, got %d\n", name, want, len(pos))
		fs.Usage()
		return exitUsage
	}
	c, err := client()
	if err != nil {
		fmt.Fprintf(stderr, "dust %s: %v\n", name, err)
		return exitUnavailable
	}
	var run func() error
	switch name {
	case "apps":
		run = func() error { return c.do("GET", "/v1/apps", nil, stdout) }
	case "app":
		run = func() error { return c.do("GET", "/v1/apps/"+url.PathEscape(pos[0]), nil, stdout) }
	case "rollback":
		run = func() error { return c.do("POST", "/v1/apps/"+url.PathEscape(pos[0])+"/rollback", nil, stdout) }
	case "rm":
		run = func() error { return c.do("DELETE", "/v1/apps/"+url.PathEscape(pos[0]), nil, stdout) }
	case "logs":
		q := ""
		if follow {
			q = "?follow=1"
		}
		run = func() error { return c.do("GET", "/v1/apps/"+url.PathEscape(pos[0])+"/logs"+q, nil, stdout) }
	case "deploy":
		run = func() error {
			f, err := os.Open(pos[1])
			if err != nil {
				return err
			}
			defer f.Close()
			if route == "" {
				route = "/" + pos[0]
			}
			q := url.Values{"route": {route}}
			set := func(k, v string) {
				if v != "" && v != "0" {
					q.Set(k, v)
				}
			}
			set("host", host)
			set("memory", strconv.FormatInt(int64(memory), 10))
			set("timeout", timeout)
			set("max_concurrency", strconv.Itoa(maxConc))
			set("queue_len", strconv.Itoa(queueLen))
			set("queue_wait", queueWait)
			set("max_body", strconv.FormatInt(int64(maxBody), 10))
			set("isolation", isolation)
			if passAuth {
				q.Set("pass_authorization", "true")
			}
			for _, e := range env {
				q.Add("env", e)
			}
			// Refused here rather than after the image has been uploaded.
			if !machine.ValidIsolation(strings.ToLower(isolation)) {
				return fmt.Errorf("%w: -isolation %q: want %s or %s", errUsage, isolation, machine.IsolationRestore, machine.IsolationFresh)
			}
			for _, d := range []string{timeout, queueWait} {
				if d != "" {
					if _, err := time.ParseDuration(d); err != nil {
						return fmt.Errorf("%w: %v", errUsage, err)
					}
				}
			}
			return c.do("PUT", "/v1/apps/"+url.PathEscape(pos[0])+"?"+q.Encode(), f, stdout)
		}
	}
	if err := run(); err != nil {
		fmt.Fprintf(stderr, "dust %s: %v\n", name, err)
		return adminExit(err)
	}
	return exitOK
}
