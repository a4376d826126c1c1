package workerpool

import (
	"os"
	"strings"
	"sync"
	"unicode/utf8"
)

// tailBytes is how much of a worker's stderr is kept in memory for error
// messages.
const tailBytes = 4 << 10

// stderrLog is a worker's stderr: a file of at most max bytes, rotated once
// (path.1 holds the previous part) so that a chatty worker cannot fill the
// disk, and the last tailBytes in memory for error messages.
type stderrLog struct {
	path string
	max  int64

	mu      sync.Mutex
	f       *os.File // nil once writing to the file failed or it was closed
	written int64
	tail    []byte
}

func newStderrLog(path string, max int64) (*stderrLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	return &stderrLog{path: path, max: max, f: f}, nil
}

// Write never fails: losing the log must not look like a broken worker.
func (l *stderrLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tail = append(l.tail, p...)
	if over := len(l.tail) - tailBytes; over > 0 {
		l.tail = append(l.tail[:0], l.tail[over:]...)
	}
	if l.f == nil {
		return len(p), nil
	}
	if l.written+int64(len(p)) > l.max && l.written > 0 {
		l.rotate()
		if l.f == nil {
			return len(p), nil
		}
	}
	n, err := l.f.Write(p)
	l.written += int64(n)
	if err != nil {
		_ = l.f.Close()
		l.f = nil
	}
	return len(p), nil
}

func (l *stderrLog) rotate() {
	_ = l.f.Close()
	l.f = nil
	_ = os.Rename(l.path, l.path+".1")
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return
	}
	l.f, l.written = f, 0
}

// Tail returns the last lines written, at most tailBytes, as valid UTF-8.
func (l *stderrLog) Tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	tail := l.tail
	if len(tail) == tailBytes {
		// Cut at a line start when there is one, else at a rune start.
		if i := strings.IndexByte(string(tail), '\n'); i >= 0 && i < len(tail)-1 {
			tail = tail[i+1:]
		}
	}
	return strings.ToValidUTF8(strings.TrimRight(string(tail), "\n"), string(utf8.RuneError))
}

// Close closes the file; later writes only feed the tail.
func (l *stderrLog) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		_ = l.f.Close()
		l.f = nil
	}
}

// Remove deletes the log files.
func (l *stderrLog) Remove() {
	l.Close()
	_ = os.Remove(l.path)
	_ = os.Remove(l.path + ".1")
}
