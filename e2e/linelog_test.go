package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
)

// lineLog collects a child's output and lets a test wait for a line.
type lineLog struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	changed chan struct{} // closed and replaced whenever a line is added
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

func (l *lineLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, b...)
	added := false
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
		added = true
	}
	if added {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	return len(b), nil
}

// waitFor returns the first line containing substr, waiting for it until ctx
// ends or exited is closed.
func (l *lineLog) waitFor(ctx context.Context, exited <-chan struct{}, substr string) (string, error) {
	seen := 0
	for {
		l.mu.Lock()
		for ; seen < len(l.lines); seen++ {
			if strings.Contains(l.lines[seen], substr) {
				line := l.lines[seen]
				l.mu.Unlock()
				return line, nil
			}
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-exited:
			// Output written just before exit may still be arriving; the
			// exec package has copied all of it once Wait returned, which
			// is when exited is closed.
			if line, ok := l.find(substr); ok {
				return line, nil
			}
			return "", fmt.Errorf("process exited without logging %q", substr)
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %q: %w", substr, ctx.Err())
		}
	}
}

func (l *lineLog) find(substr string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			return line, true
		}
	}
	return "", false
}

// String returns everything written so far.
func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n") + "\n" + string(l.partial)
}

// tail returns the last n lines.
func (l *lineLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := l.lines
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n" + string(l.partial)
}
