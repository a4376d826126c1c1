// Package digest owns the identity of a blob: its digest function, hash and
// size. It parses and validates digests received from clients, computes them,
// and names them in the canonical "hash/size" form that REAPI uses in resource
// names and PreconditionFailure subjects.
package digest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/zeebo/blake3"
)

// Function is a REAPI digest function.
type Function = repb.DigestFunction_Value

const (
	SHA256 = repb.DigestFunction_SHA256
	BLAKE3 = repb.DigestFunction_BLAKE3
)

// Supported lists the digest functions Hearth stores, in the order advertised.
var Supported = []Function{SHA256, BLAKE3}

// ErrInvalid is wrapped by every validation failure, so the service edge can
// map it to INVALID_ARGUMENT.
var ErrInvalid = errors.New("invalid digest")

// Digest identifies a blob. The zero value is not valid.
type Digest struct {
	Function Function
	Hash     string // lower-case hex
	Size     int64
}

// Resolve returns the function to use for a request. REAPI says an unset
// digest function means SHA256 (the only one with 64-hex hashes that existed
// before the field did), so UNKNOWN maps to SHA256.
func Resolve(fn Function) (Function, error) {
	switch fn {
	case repb.DigestFunction_UNKNOWN:
		return SHA256, nil
	case SHA256, BLAKE3:
		return fn, nil
	default:
		return 0, fmt.Errorf("%w: digest function %s is not supported (supported: SHA256, BLAKE3)", ErrInvalid, fn)
	}
}

// hashLen is the hex length of a hash of each supported function.
func hashLen(fn Function) int {
	switch fn {
	case SHA256, BLAKE3:
		return 64
	}
	return 0
}

// New validates and returns a digest.
func New(fn Function, hash string, size int64) (Digest, error) {
	fn, err := Resolve(fn)
	if err != nil {
		return Digest{}, err
	}
	if size < 0 {
		return Digest{}, fmt.Errorf("%w: size %d of %q is negative", ErrInvalid, size, hash)
	}
	if len(hash) != hashLen(fn) {
		return Digest{}, fmt.Errorf("%w: hash %q has %d characters, %s needs %d lower-case hex characters", ErrInvalid, hash, len(hash), fn, hashLen(fn))
	}
	for i := 0; i < len(hash); i++ {
		c := hash[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return Digest{}, fmt.Errorf("%w: hash %q is not lower-case hex", ErrInvalid, hash)
		}
	}
	return Digest{Function: fn, Hash: hash, Size: size}, nil
}

// FromProto validates a digest received from a client. A nil digest is invalid.
func FromProto(fn Function, d *repb.Digest) (Digest, error) {
	if d == nil {
		return Digest{}, fmt.Errorf("%w: digest is missing", ErrInvalid)
	}
	return New(fn, d.GetHash(), d.GetSizeBytes())
}

// Parse parses the "hash/size" form used in resource names.
func Parse(fn Function, s string) (Digest, error) {
	hash, sizeStr, ok := strings.Cut(s, "/")
	if !ok {
		return Digest{}, fmt.Errorf("%w: %q is not of the form hash/size", ErrInvalid, s)
	}
	size, err := strconv.ParseInt(sizeStr, 10, 64)
	if err != nil || (len(sizeStr) > 1 && sizeStr[0] == '0') || sizeStr[0] < '0' || sizeStr[0] > '9' {
		return Digest{}, fmt.Errorf("%w: size %q in %q is not a decimal integer", ErrInvalid, sizeStr, s)
	}
	return New(fn, hash, size)
}

// Proto returns the wire form.
func (d Digest) Proto() *repb.Digest {
	return &repb.Digest{Hash: d.Hash, SizeBytes: d.Size}
}

// String returns "hash/size", the form of resource names and of
// PreconditionFailure subjects ("blobs/" + String()).
func (d Digest) String() string {
	return d.Hash + "/" + strconv.FormatInt(d.Size, 10)
}

// ResourcePath returns "{digest_function/}hash/size" as REAPI writes it in
// ByteStream resource names and PreconditionFailure subjects: the lower-case
// function name is present for BLAKE3 and omitted for SHA256.
func (d Digest) ResourcePath() string {
	if d.Function == BLAKE3 {
		return Lower(d.Function) + "/" + d.String()
	}
	return d.String()
}

// Key is a map key that keeps digest functions apart.
type Key struct {
	Function Function
	Hash     string
	Size     int64
}

// Key returns d as a comparable map key (a Digest is already comparable; the
// alias exists so callers can say what they mean).
func (d Digest) Key() Key { return Key(d) }

// NewHasher returns a hash.Hash for fn.
func NewHasher(fn Function) hash.Hash {
	if fn == BLAKE3 {
		return blake3.New()
	}
	return sha256.New()
}

// Compute hashes data with fn.
func Compute(fn Function, data []byte) Digest {
	fn, err := Resolve(fn)
	if err != nil {
		fn = SHA256
	}
	h := NewHasher(fn)
	h.Write(data)
	return Digest{Function: fn, Hash: hex.EncodeToString(h.Sum(nil)), Size: int64(len(data))}
}

// Empty returns the digest of the empty blob, which every store holds.
func Empty(fn Function) Digest { return Compute(fn, nil) }

// IsEmpty reports whether d is the empty blob.
func (d Digest) IsEmpty() bool { return d.Size == 0 && d == Empty(d.Function) }

// Lower returns the lower-case name of fn used in resource names ("blake3").
func Lower(fn Function) string { return strings.ToLower(fn.String()) }

// FunctionFromLower parses the digest-function segment of a resource name.
func FunctionFromLower(s string) (Function, bool) {
	for _, fn := range Supported {
		if Lower(fn) == s {
			return fn, true
		}
	}
	return 0, false
}
