package runner

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// validate checks everything Run relies on, naming the bad value.
func (r *Request) validate() error {
	if len(r.Args) == 0 {
		return fmt.Errorf("%w: no arguments", ErrInvalidRequest)
	}
	for i, a := range r.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: arguments[%d] %q contains a NUL byte", ErrInvalidRequest, i, a)
		}
	}
	seen := make(map[string]int, len(r.Env))
	for i, e := range r.Env {
		name, _, ok := strings.Cut(e, "=")
		switch {
		case !ok:
			return fmt.Errorf("%w: environment entry %d %q has no '='", ErrInvalidRequest, i, e)
		case name == "":
			return fmt.Errorf("%w: environment entry %d %q has an empty name", ErrInvalidRequest, i, e)
		case strings.IndexByte(e, 0) >= 0:
			return fmt.Errorf("%w: environment entry %d %q contains a NUL byte", ErrInvalidRequest, i, e)
		}
		if j, dup := seen[name]; dup {
			return fmt.Errorf("%w: environment variable %q set twice (entries %d and %d)", ErrInvalidRequest, name, j, i)
		}
		seen[name] = i
	}
	if !filepath.IsAbs(r.Dir) {
		return fmt.Errorf("%w: working directory %q is not absolute", ErrInvalidRequest, r.Dir)
	}
	info, err := os.Stat(r.Dir)
	if err != nil {
		return fmt.Errorf("%w: working directory %q: %w", ErrInvalidRequest, r.Dir, err)
	}
	if !info.IsDir() {
		return fmt.Errorf("%w: working directory %q is not a directory", ErrInvalidRequest, r.Dir)
	}
	switch {
	case r.Timeout < 0:
		return fmt.Errorf("%w: negative timeout %v", ErrInvalidRequest, r.Timeout)
	case r.KillGrace < 0:
		return fmt.Errorf("%w: negative kill grace %v", ErrInvalidRequest, r.KillGrace)
	case r.WaitDelay < 0:
		return fmt.Errorf("%w: negative wait delay %v", ErrInvalidRequest, r.WaitDelay)
	}
	for name, w := range map[string]io.Writer{"stdout": r.Stdout, "stderr": r.Stderr} {
		if f, ok := w.(*os.File); ok && f == nil {
			return fmt.Errorf("%w: %s is a nil *os.File", ErrInvalidRequest, name)
		}
	}
	return nil
}
