package runner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultPath is searched for an unqualified arguments[0] when the Command's
// environment has no PATH. REAPI leaves this case to the implementation; this
// is what shells and execvp(3) fall back to, and it never reads the worker's
// own PATH.
const DefaultPath = "/usr/local/bin:/usr/bin:/bin"

// ResolveExecutable returns the absolute path of the program that arguments[0]
// names, following REAPI (v2.3+):
//   - an absolute path is used as is;
//   - a relative path containing '/' is relative to dir, the working directory;
//   - a bare name is searched in the PATH found in env ("NAME=value" entries,
//     the last PATH wins), or DefaultPath if env has none. Relative PATH
//     entries, including an empty entry (meaning "."), are relative to dir.
//
// dir must be absolute. The result is not a symlink-resolved path, so a
// multi-call tool still sees the name it was invoked by.
//
// Errors wrap ErrCommandNotFound when nothing exists under that name and
// ErrNotExecutable when only non-executable files (or directories) do.
func ResolveExecutable(args0 string, env []string, dir string) (string, error) {
	if args0 == "" {
		return "", fmt.Errorf("%w: arguments[0] is empty", ErrInvalidRequest)
	}
	if strings.IndexByte(args0, 0) >= 0 {
		return "", fmt.Errorf("%w: arguments[0] %q contains a NUL byte", ErrInvalidRequest, args0)
	}
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("%w: working directory %q is not absolute", ErrInvalidRequest, dir)
	}

	if strings.Contains(args0, "/") {
		path := args0
		if !filepath.IsAbs(path) {
			path = filepath.Join(dir, path)
		}
		if err := checkExecutable(path); err != nil {
			return "", fmt.Errorf("%w: %q (resolved to %s): %w", errorKind(err), args0, path, err)
		}
		return path, nil
	}

	searchPath, ok := lookupEnv(env, "PATH")
	source := "the Command's PATH"
	if !ok {
		searchPath, source = DefaultPath, "the default PATH (the Command sets none)"
	}
	var denied string
	var deniedErr error
	// Not filepath.SplitList: it maps "" to no entries, but POSIX reads an
	// empty PATH as one empty entry, the working directory.
	for _, entry := range strings.Split(searchPath, ":") {
		if entry == "" {
			entry = "."
		}
		if !filepath.IsAbs(entry) {
			entry = filepath.Join(dir, entry)
		}
		candidate := filepath.Join(entry, args0)
		err := checkExecutable(candidate)
		if err == nil {
			return candidate, nil
		}
		// Like execvp(3): keep searching past a non-executable match, but
		// report it if nothing better turns up.
		if errorKind(err) == ErrNotExecutable && denied == "" {
			denied, deniedErr = candidate, err
		}
	}
	if denied != "" {
		return "", fmt.Errorf("%w: %q found on %s %q as %s: %w",
			ErrNotExecutable, args0, source, searchPath, denied, deniedErr)
	}
	return "", fmt.Errorf("%w: %q is not on %s %q (relative entries searched under %s)",
		ErrCommandNotFound, args0, source, searchPath, dir)
}

// errNotRegular and errNoExecBit describe why an existing file cannot run.
var (
	errNotRegular = errors.New("not a regular file")
	errNoExecBit  = errors.New("no execute permission")
)

// checkExecutable reports whether path (following symlinks) is a regular file
// with an execute bit.
func checkExecutable(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%w (mode %s)", errNotRegular, info.Mode())
	}
	if info.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%w (mode %s)", errNoExecBit, info.Mode())
	}
	return nil
}

// errorKind maps a checkExecutable error to the sentinel callers match on:
// anything that does not exist is "not found", anything that exists but cannot
// be run (or cannot even be looked at) is "not executable".
func errorKind(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return ErrCommandNotFound
	}
	return ErrNotExecutable
}

// lookupEnv returns the value of the last "name=..." entry in env.
func lookupEnv(env []string, name string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == name {
			return v, true
		}
	}
	return "", false
}
