// Package cas owns content-addressed blob storage: the Store interface that
// every consumer (the REAPI services, the executor's file cache, the runner)
// programs against, the durable disk implementation, and wrappers that each add
// one concern (digest verification, metrics).
//
// Stores are composed by wrapping: NewVerifying(NewDisk(...)) is what a server
// runs, so that a blob whose bytes do not match its digest is never stored.
package cas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/digest"
)

// ErrNotFound is returned (wrapped) when a blob is not in the store.
var ErrNotFound = errors.New("blob not found")

// ErrMismatch is returned (wrapped) by Writer.Commit when the bytes written do
// not hash to, or are not the size of, the digest they were written under.
var ErrMismatch = errors.New("blob does not match its digest")

// ErrOutOfRange is returned (wrapped) by Open when the offset is negative or
// beyond the blob's size (ByteStream's OUT_OF_RANGE).
var ErrOutOfRange = errors.New("offset out of range")

// ErrTooLarge is returned (wrapped) by Create when a blob can never fit in the
// store, e.g. it is larger than a bounded disk store's whole capacity.
var ErrTooLarge = errors.New("blob too large for the store")

// Store holds blobs by digest. Digests of different functions are separate
// namespaces. The empty blob of every function is always present.
type Store interface {
	// FindMissing returns the digests of ds that are not in the store, in the
	// order given, without duplicates. It also marks present blobs as used, so
	// that an eviction policy keeps blobs a client was just told exist.
	FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error)
	// Open returns a reader of the blob from offset (0 ≤ offset ≤ size). Once
	// opened, the blob stays readable until the reader is closed, even if it
	// is evicted meanwhile. An absent blob is ErrNotFound, a bad offset
	// ErrOutOfRange (both wrapped).
	Open(ctx context.Context, d digest.Digest, offset int64) (io.ReadCloser, error)
	// Create starts writing the blob d. Nothing is visible to readers until
	// Commit succeeds; Close without Commit discards the write. A store that
	// can never hold d (a bounded store smaller than d) returns ErrTooLarge
	// (wrapped).
	Create(ctx context.Context, d digest.Digest) (Writer, error)
}

// Writer writes one blob. Commit makes it durable (it survives a crash once
// Commit returns) and visible; Close releases resources and, if Commit was not
// called or failed, discards everything written.
type Writer interface {
	io.Writer
	Commit() error
	Close() error
}

// Put writes data as the blob d.
func Put(ctx context.Context, s Store, d digest.Digest, data []byte) error {
	return Copy(ctx, s, d, bytes.NewReader(data))
}

// Copy writes everything r yields as the blob d.
func Copy(ctx context.Context, s Store, d digest.Digest, r io.Reader) error {
	w, err := s.Create(ctx, d)
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := io.Copy(w, r); err != nil {
		return err
	}
	return w.Commit()
}

// Get reads the whole blob d. Callers use it only for blobs they know are
// small (protos, batch reads under the batch size limit).
func Get(ctx context.Context, s Store, d digest.Digest) ([]byte, error) {
	r, err := s.Open(ctx, d, 0)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	buf := make([]byte, 0, d.Size)
	b := bytes.NewBuffer(buf)
	if _, err := io.Copy(b, r); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ErrNotMessage is wrapped by GetProto when a blob does not decode as the
// message it should hold; the edge answers INVALID_ARGUMENT.
var ErrNotMessage = errors.New("blob is not the expected message")

// GetProto reads the small blob d and decodes it into m. A missing blob is a
// *MissingError, so callers can report it as REAPI asks; what names the
// message in errors ("Command", "Action").
func GetProto(ctx context.Context, s Store, d digest.Digest, m proto.Message, what string) error {
	data, err := Get(ctx, s, d)
	if errors.Is(err, ErrNotFound) {
		return &MissingError{Digests: []digest.Digest{d}}
	}
	if err != nil {
		return fmt.Errorf("reading %s %s: %w", what, d, err)
	}
	if err := proto.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w: %s %s is not a valid %s message: %v", ErrNotMessage, what, d, what, err)
	}
	return nil
}

// MissingError reports blobs that an operation needed and the store does not
// hold. The service edge turns it into FAILED_PRECONDITION with one
// PreconditionFailure violation of type "MISSING" and subject
// "blobs/{hash}/{size}" per digest, as REAPI prescribes.
type MissingError struct {
	Digests []digest.Digest
}

func (e *MissingError) Error() string {
	s := "missing blobs:"
	for i, d := range e.Digests {
		if i == 10 {
			s += " …"
			break
		}
		s += " " + d.String()
	}
	return s
}

// Is makes errors.Is(err, ErrNotFound) true for a MissingError.
func (e *MissingError) Is(target error) bool { return target == ErrNotFound }
