package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// invocations counts the requests this process has started; a fresh
// one-shot run is always invocation 1, which is what lets tests tell a
// reused worker's outputs from a fresh run's.
var invocations atomic.Int64

// grown keeps the memory allocated by --grow reachable for the life of the
// process, so its resident size really rises across requests.
var grown struct {
	sync.Mutex
	blocks [][]byte
}

// errStopped ends an action early without an error message: the request was
// cancelled.
var errStopped = errors.New("stopped")

// action is one request (or the one-shot run) being performed.
type action struct {
	args       []string
	inputs     []*pb.Input // nil in one-shot mode: a plain command has no input list
	baseDir    string      // where relative paths point: cwd, or the sandbox dir
	invocation int64
	stdout     *lockedStdout
	garbage    string // what --garbage writes; chosen to break the active protocol

	currentOut string // the file --content appends to
	output     strings.Builder
	exitCode   int32
}

// perform runs the action's arguments in order and returns the exit code and
// output text. A failing argument appends a message and sets exit code 2.
func (a *action) perform(ctx context.Context) (int32, string) {
	args, err := expandFlagFiles(a.args, a.baseDir, 0)
	if err != nil {
		fmt.Fprintf(&a.output, "testworker: %v\n", err)
		return 2, a.output.String()
	}
	for i, arg := range args {
		if err := ctx.Err(); err != nil {
			break
		}
		if ok, err := a.detach(arg, args[i+1:]); ok {
			if err != nil {
				fmt.Fprintf(&a.output, "testworker: %s: %v\n", arg, err)
				a.exitCode = 2
			}
			break
		}
		if err := a.apply(ctx, arg); err != nil {
			if !errors.Is(err, errStopped) {
				fmt.Fprintf(&a.output, "testworker: %s: %v\n", arg, err)
				a.exitCode = 2
			}
			break
		}
	}
	return a.exitCode, a.output.String()
}

func (a *action) path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(a.baseDir, p)
}

func (a *action) writeFile(p, content string) error {
	full := a.path(p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	return os.WriteFile(full, []byte(content), 0o644)
}

// apply performs one argument. Unknown arguments (startup flags in a one-shot
// command line, flags of the real tool a test imitates) are logged and
// skipped.
func (a *action) apply(ctx context.Context, arg string) error {
	name, value, hasValue := strings.Cut(arg, "=")
	needsValue := func() error {
		if !hasValue {
			return fmt.Errorf("%s needs a value (%s=...)", name, name)
		}
		return nil
	}
	switch name {
	case "--out":
		if err := needsValue(); err != nil {
			return err
		}
		a.currentOut = value
		return a.writeFile(value, "")
	case "--content":
		if err := needsValue(); err != nil {
			return err
		}
		if a.currentOut == "" {
			return errors.New("--content without a preceding --out")
		}
		f, err := os.OpenFile(a.path(a.currentOut), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(value)
		return errors.Join(err, f.Close())
	case "--echo-inputs":
		if err := needsValue(); err != nil {
			return err
		}
		return a.writeFile(value, a.inputList())
	case "--cat":
		if err := needsValue(); err != nil {
			return err
		}
		data, err := os.ReadFile(a.path(value))
		if err != nil {
			return err
		}
		a.output.Write(data)
	case "--say":
		a.output.WriteString(value + "\n")
	case "--counter":
		fmt.Fprintf(&a.output, "%d\n", a.invocation)
	case "--stateful-out":
		if err := needsValue(); err != nil {
			return err
		}
		return a.writeFile(value, fmt.Sprintf("invocation %d\n", a.invocation))
	case "--pid":
		if err := needsValue(); err != nil {
			return err
		}
		return a.writeFile(value, strconv.Itoa(os.Getpid())+"\n")
	case "--argv":
		if err := needsValue(); err != nil {
			return err
		}
		return a.writeFile(value, strings.Join(os.Args[1:], "\n")+"\n")
	case "--getenv":
		fmt.Fprintf(&a.output, "%s=%s\n", value, os.Getenv(value))
	case "--sleep":
		d, err := time.ParseDuration(value)
		if err != nil {
			return err
		}
		return sleep(ctx, d)
	case "--exit":
		code, err := strconv.ParseInt(value, 10, 32)
		if err != nil {
			return err
		}
		a.exitCode = int32(code)
	case "--grow":
		n, err := parseSize(value)
		if err != nil {
			return err
		}
		grow(n)
	case "--crash":
		slog.Info("testworker: crashing on request")
		os.Exit(exitCrash)
	case "--garbage":
		if _, err := a.stdout.Write([]byte(a.garbage)); err != nil {
			slog.Warn("testworker: writing garbage", "err", err)
		}
	case "--close-stdout":
		a.stdout.close()
	case "--ls", "--stat", "--rm", "--replace", "--chmod":
		return a.workspaceAction(name, value)
	case persistentFlag, "--multiplex", "--honor-cancel", "--startup-banner", protocolFlagKey:
		// Startup flags, present when a one-shot command line is performed.
	default:
		slog.Info("testworker: ignoring argument", "arg", arg)
	}
	return nil
}

// inputList renders the request's inputs as sorted "path digest" lines. The
// digest is printed as text when it is printable (Hearth sends hex), else in
// hex with a "hex:" prefix.
func (a *action) inputList() string {
	lines := make([]string, 0, len(a.inputs))
	for _, in := range a.inputs {
		d := string(in.GetDigest())
		if !isPrintable(d) {
			d = "hex:" + hex.EncodeToString(in.GetDigest())
		}
		lines = append(lines, in.GetPath()+" "+d+"\n")
	}
	slices.Sort(lines)
	return strings.Join(lines, "")
}

func isPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// sleep waits for d, or returns errStopped when ctx ends first. Only a
// honoured cancel ever ends ctx.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return errStopped
	}
}

// parseSize parses a byte count with an optional binary suffix K, M or G.
func parseSize(s string) (int64, error) {
	digits, mult := s, int64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult != 1 {
			digits = s[:len(s)-1]
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("bad size %q: want a byte count up to 1T with an optional K, M or G suffix", s)
	}
	return n * mult, nil
}

// grow allocates n bytes and writes to every page, so that the pages are
// resident rather than merely reserved.
func grow(n int64) {
	block := make([]byte, n)
	const page = 4096
	for i := int64(0); i < n; i += page {
		block[i] = 1
	}
	grown.Lock()
	grown.blocks = append(grown.blocks, block)
	grown.Unlock()
}
