// Command dust runs requests in brand-new machines: `dust run IMAGE` sends
// one request through one fresh machine and prints the HTTP response.
//
// Exit codes (see exitcodes.go and docs/cli.md) are stable: scripts may
// rely on them.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: dust <command> [flags]

commands:
  run IMAGE          run one request through one fresh machine and print the response
                     (-requests N: N times, on one restored machine or -isolation fresh)
  serve              run the gateway: one fresh machine per HTTP request (-demo deploys the examples)
  deploy NAME IMAGE  deploy (or redeploy) an app to a running gateway
  apps               list deployed apps
  app NAME           show an app: settings, versions, live status
  rollback NAME      switch an app back to its previous version
  rm NAME            remove an app
  logs NAME [-f]     print (and follow) an app's log
  bench              measure Dust against processes, CGI, QEMU and wasm, side by side
  version            print the version

Run 'dust <command> -h' for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], os.Stdout, os.Stderr)
	case "serve":
		return cmdServe(args[1:], os.Stdout, os.Stderr)
	case "deploy", "apps", "app", "rollback", "rm", "logs":
		return cmdAdmin(args[0], args[1:], os.Stdout, os.Stderr)
	case "bench":
		return cmdBench(args[1:], os.Stdout, os.Stderr)
	case "version":
		fmt.Println("dust", version)
		return exitOK
	case "-h", "--help", "help":
		fmt.Print(usage)
		return exitOK
	default:
		fmt.Fprintf(os.Stderr, "dust: unknown command %q\n%s", args[0], usage)
		return exitUsage
	}
}

const version = "0.1.0-dev"
