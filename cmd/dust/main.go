// Command dust runs requests in brand-new machines: `dust run IMAGE` sends
// one request through one fresh machine and prints the HTTP response.
//
// Exit codes (see exitcodes.go and docs/cli.md) are stable: scripts may
// rely on them.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

const usage = `usage: dust <command> [flags]

commands:
  run IMAGE            run one request through a pristine machine and print the response
  serve                run the gateway: a pristine machine per HTTP request
  new TEMPLATE DIR     write a working app and its manifest dust.toml (templates: c, go-wasm, linux-c, go-linux)
  dev [DIR]            serve the app in DIR on a local gateway; rebuild and redeploy when its sources change
  deploy NAME IMAGE    deploy (or redeploy) an app; unset settings are kept (no arguments: ./dust.toml)
  apps                 list deployed apps
  app NAME             show an app: settings, versions, live status, recent failures
  rollback NAME        switch an app back to its previous version (--to N: version N)
  rm NAME              remove an app
  gc                   give disk back now: unused images and compiled code
  logs NAME            print an app's log (-f: follow, --since 10m)
  secret set|rm|ls APP set, remove or list an app's secrets
  status               show the cluster: nodes, their load, where each app is ready
  bench                measure Dust against processes, CGI, QEMU and wasm, side by side
  version              print the version

Run 'dust <command> -h' for a command's flags and an example; docs/cli.md
has the whole reference and the exit codes.
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	return dispatch(args, os.Stdout, os.Stderr)
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "serve":
		return cmdServe(args[1:], stdout, stderr)
	case "deploy", "apps", "app", "rollback", "rm", "logs", "gc":
		return cmdAdmin(args[0], args[1:], stdout, stderr)
	case "secret", "secrets":
		return cmdSecret(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "new":
		return cmdNew(args[1:], stdout, stderr)
	case "dev":
		return cmdDev(args[1:], stdout, stderr)
	case "bench":
		return cmdBench(args[1:], stdout, stderr)
	case "version":
		return cmdVersion(args[1:], stdout, stderr)
	case "help":
		if len(args) > 1 {
			return dispatch([]string{args[1], "-h"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return exitOK
	case "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "dust: unknown command %q (see 'dust -h')\n", args[0])
		return exitUsage
	}
}

// versionString is the module version and the VCS revision the binary was
// built from, as far as the build recorded them.
func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dust (no build information)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, at, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = ", modified"
			}
		}
	}
	out := "dust " + v
	if rev != "" {
		out += fmt.Sprintf(" (%s, %s%s)", rev[:min(12, len(rev))], at, dirty)
	}
	return out + " " + bi.GoVersion
}

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	f := newCmdFlags("version", "", "Prints the module version, the VCS revision it was built from and the Go version.", "  dust version")
	pos, code, ok := f.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 0 {
		return f.usageErr(stderr, "want no arguments, got %s", strings.Join(pos, " "))
	}
	fmt.Fprintln(stdout, versionString())
	return exitOK
}
