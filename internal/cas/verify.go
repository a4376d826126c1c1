package cas

import (
	"context"
	"encoding/hex"
	"fmt"
	"hash"

	"github.com/hearth-build/hearth/internal/digest"
)

// NewVerifying wraps s so that every blob written is hashed with its digest's
// function and committed only if its hash and size match the digest. On a
// mismatch Commit returns an error wrapping ErrMismatch and nothing is stored:
// the inner writer is closed without being committed. A write past the
// digest's size fails at once. Reads and FindMissing pass through.
func NewVerifying(s Store) Store { return verifying{s} }

type verifying struct{ Store }

func (v verifying) Create(ctx context.Context, d digest.Digest) (Writer, error) {
	// Validate first: the hasher must be the digest's own function, and a
	// malformed digest must not reach the inner store.
	d, err := digest.New(d.Function, d.Hash, d.Size)
	if err != nil {
		return nil, fmt.Errorf("cas: create: %w", err)
	}
	w, err := v.Store.Create(ctx, d)
	if err != nil {
		return nil, err
	}
	return &verifyingWriter{inner: w, d: d, h: digest.NewHasher(d.Function)}, nil
}

type verifyingWriter struct {
	inner   Writer
	d       digest.Digest
	h       hash.Hash
	written int64
	err     error // sticky; once set, Commit fails and the inner writer is closed
	closed  bool
}

func (w *verifyingWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.written+int64(len(p)) > w.d.Size {
		w.fail(fmt.Errorf("%w: %s %s: %d bytes written, more than its size %d",
			ErrMismatch, w.d.Function, w.d, w.written+int64(len(p)), w.d.Size))
		return 0, w.err
	}
	n, err := w.inner.Write(p)
	w.h.Write(p[:n]) // hash.Hash.Write never fails
	w.written += int64(n)
	if err != nil {
		w.fail(err)
	}
	return n, err
}

func (w *verifyingWriter) Commit() error {
	if w.err != nil {
		return w.err
	}
	if w.written != w.d.Size {
		w.fail(fmt.Errorf("%w: %s %s: got %d bytes, want %d", ErrMismatch, w.d.Function, w.d, w.written, w.d.Size))
		return w.err
	}
	if got := hex.EncodeToString(w.h.Sum(nil)); got != w.d.Hash {
		w.fail(fmt.Errorf("%w: %s %s: the bytes hash to %s, want %s", ErrMismatch, w.d.Function, w.d, got, w.d.Hash))
		return w.err
	}
	return w.inner.Commit()
}

// fail records the first error and discards the inner write at once, so a
// rejected upload releases its temp file even if the caller forgets Close.
func (w *verifyingWriter) fail(err error) {
	if w.err == nil {
		w.err = err
	}
	w.Close()
}

func (w *verifyingWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	return w.inner.Close()
}
