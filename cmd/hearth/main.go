// Command hearth is the single Hearth binary. It only parses flags and
// configuration and wires the internal packages together; behaviour lives in
// internal/.
package main

import (
	"fmt"
	"os"
)

const usage = `hearth: remote execution with warm persistent workers (REAPI v2)

usage:
  hearth serve  [flags]   CAS, action cache, scheduler and an embedded executor in one process
  hearth server [flags]   the same without the executor; executors connect with "hearth worker"
  hearth worker --config worker.json5
                          executors for a "hearth server" (NativeLink-style config)
  hearth run    --action=F --action-result=F --remote=URL [flags]
                          execute one serialized Action (buildbox-run compatible)
  hearth token  new|hash  make a bearer token / hash one for the server config
  hearth buck2-worker [flags] -- <bazel worker argv>
                          a Buck2 local persistent worker ($WORKER_SOCKET) run by Bazel-protocol workers
  hearth version

Run "hearth <command> -h" for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = runServe(os.Args[2:])
	case "server":
		err = runServer(os.Args[2:])
	case "worker":
		err = runWorker(os.Args[2:])
	case "run":
		err = runRun(os.Args[2:])
	case "token":
		err = runToken(os.Args[2:])
	case "buck2-worker":
		err = runBuck2Worker(os.Args[2:])
	case "version", "--version":
		fmt.Println("hearth", version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "hearth: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "hearth %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

var version = "dev"
