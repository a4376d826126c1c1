package buck2worker

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// mergeEnv overlays the request's variables on the base environment, as
// Buck2 sets them on top of what a local command inherits, skipping the
// names in skip.
func mergeEnv(base, request, skip []string) []string {
	env := slices.Clone(base)
	index := make(map[string]int, len(env))
	for i, kv := range env {
		name, _, _ := cutEnv(kv)
		index[name] = i
	}
	for _, kv := range request {
		name, _, _ := cutEnv(kv)
		if slices.Contains(skip, name) {
			continue
		}
		if i, ok := index[name]; ok {
			env[i] = kv
			continue
		}
		index[name] = len(env)
		env = append(env, kv)
	}
	return env
}

// WithoutVar returns env without the variable name.
func WithoutVar(env []string, name string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		n, _, _ := cutEnv(kv)
		return n == name
	})
}

// cutEnv splits NAME=value; ok is false without a non-empty name.
func cutEnv(kv string) (name, value string, ok bool) {
	name, value, ok = strings.Cut(kv, "=")
	return name, value, ok && name != ""
}

// checkText rejects what cannot travel in a WorkRequest's strings or a
// process's argv and environment.
func checkText(s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return errors.New("contains a NUL byte")
	}
	if !utf8.ValidString(s) {
		return errors.New("is not valid UTF-8")
	}
	return nil
}

// limitedBuffer keeps the first max bytes written to it, from any number of
// goroutines (a one-shot run's stdout and stderr).
type limitedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); len(p) > room {
		b.buf.Write(p[:max(room, 0)])
		b.dropped = true
		return len(p), nil
	}
	b.buf.Write(p)
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.ToValidUTF8(b.buf.String(), "\uFFFD")
	if b.dropped {
		s += "\n[hearth buck2-worker: output truncated]\n"
	}
	return s
}
