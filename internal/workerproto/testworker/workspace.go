package main

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Actions that look at and tamper with the workspace, for the tests of what
// a worker's next request sees there.

// workspaceAction performs --ls, --stat, --rm, --replace and --chmod.
//
// --ls lists, sorted, every entry below the base directory except tools/ and
// the sandbox root: "path/" for a directory, "path MODE" for a file (octal
// permission bits), "path -> target" for a symlink.
func (a *action) workspaceAction(name, value string) error {
	switch name {
	case "--ls":
		return filepath.WalkDir(a.baseDir, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(a.baseDir, p)
			rel = filepath.ToSlash(rel)
			switch {
			case rel == ".":
				return nil
			case rel == "tools" || rel == "_hearth_sandbox":
				return filepath.SkipDir
			case e.IsDir():
				fmt.Fprintf(&a.output, "%s/\n", rel)
			case e.Type()&fs.ModeSymlink != 0:
				target, _ := os.Readlink(p)
				fmt.Fprintf(&a.output, "%s -> %s\n", rel, target)
			default:
				fi, err := e.Info()
				if err != nil {
					return err
				}
				fmt.Fprintf(&a.output, "%s %o\n", rel, fi.Mode().Perm())
			}
			return nil
		})
	case "--stat":
		fi, err := os.Lstat(a.path(value))
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&a.output, "%d %d.%09d\n", st.Ino, st.Ctim.Sec, st.Ctim.Nsec)
	case "--rm":
		return os.Remove(a.path(value))
	case "--replace":
		if err := os.Remove(a.path(value)); err != nil {
			return err
		}
		return os.WriteFile(a.path(value), []byte("replaced"), 0o444)
	case "--chmod":
		return os.Chmod(a.path(value), 0o644)
	}
	return nil
}

// detach handles --detach=DURATION: the rest of the arguments run in the
// background after DURATION, while the worker is idle, their output
// discarded. ok reports whether arg was --detach; err is a bad duration.
func (a *action) detach(arg string, rest []string) (ok bool, err error) {
	value, found := strings.CutPrefix(arg, "--detach=")
	if !found {
		return false, nil
	}
	d, err := time.ParseDuration(value)
	if err != nil {
		return true, err
	}
	later := &action{args: rest, baseDir: a.baseDir, invocation: a.invocation, stdout: a.stdout, garbage: a.garbage}
	go func() {
		time.Sleep(d)
		for _, arg := range rest {
			if err := later.apply(context.Background(), arg); err != nil {
				slog.Warn("testworker: detached action failed", "arg", arg, "err", err)
			}
		}
	}()
	return true, nil
}
