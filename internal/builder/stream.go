package builder

import (
	"context"
	"os"
	"sync"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/outputs"
)

// spillLimit is how much of an output stream is kept in memory before it
// goes to a file. Most actions print little or nothing; sparing them two
// files to create, upload from and delete is a measurable part of a small
// action's cost, while a chatty action still never holds more than this.
const spillLimit = 1 << 20

// streamCapture receives an action's stdout or stderr: in memory up to
// spillLimit, then in a file.
type streamCapture struct {
	path string // the file it spills to

	mu   sync.Mutex
	buf  []byte
	file *os.File
	err  error
}

func (s *streamCapture) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, s.err
	}
	if s.file == nil && len(s.buf)+len(p) <= spillLimit {
		s.buf = append(s.buf, p...)
		return len(p), nil
	}
	if s.file == nil {
		f, err := os.Create(s.path)
		if err != nil {
			s.err = err
			return 0, err
		}
		s.file = f
		if _, err := f.Write(s.buf); err != nil {
			s.err = err
			return 0, err
		}
		s.buf = nil
	}
	n, err := s.file.Write(p)
	if err != nil {
		s.err = err
	}
	return n, err
}

// upload stores what was captured and returns its digest.
func (s *streamCapture) upload(ctx context.Context, store cas.Store, fn digest.Function) (digest.Digest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return digest.Digest{}, s.err
	}
	if s.file == nil {
		return outputs.UploadBytes(ctx, store, fn, s.buf)
	}
	if err := s.file.Close(); err != nil {
		return digest.Digest{}, err
	}
	s.file = nil
	return outputs.UploadFile(ctx, store, fn, s.path)
}

// close releases the file, if any.
func (s *streamCapture) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
}
