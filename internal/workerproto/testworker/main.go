// Command testworker is a Bazel-style persistent worker whose behaviour is
// scripted by its arguments. Tests of Hearth's worker pool and executor build
// it and run it as a real child process, both as a persistent worker and as
// the one-shot fallback, so every code path sees a real process speaking the
// real protocol.
//
// Startup flags (the command line of the process):
//
//	--persistent_worker  serve WorkRequests on stdin, WorkResponses on stdout, until stdin ends
//	--protocol=proto|json  wire encoding (default proto)
//	--multiplex          handle requests concurrently, answering each by request_id
//	--honor-cancel       stop a request when a cancel arrives for it and answer was_cancelled
//	--startup-banner     print a non-protocol line to stdout before serving (a misbehaving worker)
//
// Any other startup argument is ignored but logged on stderr, so tests can
// vary startup args to make distinct worker keys. Without --persistent_worker
// the process runs once: its own arguments (flag files expanded) are the
// action's arguments, the output text goes to stderr and the exit code is the
// process's, exactly as a persistent request would have answered.
//
// Action arguments, processed in order (see actions.go for the details):
//
//	--out=PATH --content=TEXT  create PATH (parents too), then append TEXT to it
//	--echo-inputs=PATH         write the request's sorted "path digest" lines
//	--cat=PATH                 append an input file's content to the output
//	--say=TEXT                 append TEXT and a newline to the output
//	--counter                  append this process's invocation count and a newline
//	--stateful-out=PATH        write "invocation N" (differs in a reused worker)
//	--pid=PATH                 write the process id
//	--argv=PATH                write the process's own arguments, one a line
//	--getenv=NAME              append NAME=value and a newline to the output
//	--sleep=DURATION           sleep (interrupted by a honoured cancel)
//	--exit=N                   set the exit code
//	--grow=BYTES               allocate and touch BYTES (suffix K, M or G) and keep them
//	--crash                    exit with code 3 at once, answering nothing
//	--garbage                  write non-protocol bytes to stdout and carry on
//	--close-stdout             close stdout and carry on (responses are lost)
//	--ls                       append the workspace's entries (see workspace.go)
//	--stat=PATH                append PATH's inode and ctime (relinking changes the ctime)
//	--rm=PATH                  remove PATH
//	--replace=PATH             put a new file with the text "replaced" at PATH
//	--chmod=PATH               make PATH writable (0644), through its inode
//	--detach=DURATION          answer now; perform the remaining arguments after DURATION
//
// Arguments of the form @FILE, --flagfile=FILE and -flagfile=FILE are
// replaced by FILE's lines (recursively) in both modes; @@x stands for a
// literal @x. Unknown arguments are skipped. A failing argument (unreadable
// --cat file, bad --sleep value, ...) appends "testworker: ARG: error" to the
// output, sets exit code 2 and ends the request. --echo-inputs writes an
// empty file in one-shot mode, where there is no input list. Relative paths
// are relative to the working directory, or to the request's sandbox_dir
// when it has one.
//
// A singleplex worker performs requests one at a time in arrival order while
// still reading stdin, so a cancel reaches the running request; a multiplex
// worker answers a second request with an id still in flight with exit code
// 2. Logs go to stderr only, and not at all in one-shot mode, where stderr is
// the action's output.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/hearth-build/hearth/internal/workerproto"
)

// Exit codes of the process itself (an action's exit code is its own).
const (
	exitCrash       = 3 // --crash
	exitBadUsage    = 2 // bad startup flags or an unreadable request stream
	bannerLine      = "# testworker: startup banner on stdout, which no well-behaved worker prints\n"
	jsonGarbage     = "testworker: this line is not a work response\n"
	protoGarbage    = "\x07garbage" // a 7-byte frame whose first byte has wire type 7: undecodable at once
	persistentFlag  = "--persistent_worker"
	protocolFlagKey = "--protocol"
)

// startup holds the flags that shape the process rather than one request.
type startup struct {
	persistent   bool
	multiplex    bool
	honorCancel  bool
	banner       bool
	protocol     workerproto.Protocol
	ignoredFlags []string
}

func parseStartup(args []string) (startup, error) {
	var s startup
	for _, arg := range args {
		name, value, _ := strings.Cut(arg, "=")
		switch {
		case arg == persistentFlag:
			s.persistent = true
		case arg == "--multiplex":
			s.multiplex = true
		case arg == "--honor-cancel":
			s.honorCancel = true
		case arg == "--startup-banner":
			s.banner = true
		case name == protocolFlagKey:
			p, err := workerproto.ParseProtocol(value)
			if err != nil {
				return s, err
			}
			s.protocol = p
		default:
			s.ignoredFlags = append(s.ignoredFlags, arg)
		}
	}
	return s, nil
}

func main() {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	s, err := parseStartup(args)
	if err != nil {
		slog.Error("testworker: bad startup flags", "err", err)
		return exitBadUsage
	}
	if !s.persistent {
		// stderr is the action's output now; a log line would corrupt it.
		slog.SetDefault(slog.New(slog.DiscardHandler))
		return runOneShot(args)
	}
	slog.Info("testworker: starting", "pid", os.Getpid(), "protocol", s.protocol,
		"multiplex", s.multiplex, "honor_cancel", s.honorCancel, "other_startup_args", s.ignoredFlags)
	out := &lockedStdout{f: os.Stdout}
	if s.banner {
		if _, err := out.Write([]byte(bannerLine)); err != nil {
			slog.Error("testworker: writing banner", "err", err)
		}
	}
	return newServer(s, out).serve(os.Stdin)
}

// runOneShot performs the action described by args and reports it the way a
// plain command does: output text on stderr, the exit code as the process's.
func runOneShot(args []string) int {
	cwd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testworker: %v\n", err)
		return exitBadUsage
	}
	a := &action{
		args:       args,
		baseDir:    cwd,
		invocation: invocations.Add(1),
		stdout:     &lockedStdout{f: os.Stdout},
		garbage:    jsonGarbage,
	}
	code, output := a.perform(context.Background())
	fmt.Fprint(os.Stderr, output)
	return int(code)
}
