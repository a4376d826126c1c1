package reapi

import (
	"fmt"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
)

// ResourceName is a parsed ByteStream resource name of REAPI's CAS (see the
// ContentAddressableStorage comment in remote_execution.proto):
//
//	read:   {instance}/blobs/{function/}{hash}/{size}
//	        {instance}/compressed-blobs/{compressor}/{function/}{hash}/{size}
//	upload: {instance}/uploads/{uuid}/blobs/{function/}{hash}/{size}{/metadata}
//	        {instance}/uploads/{uuid}/compressed-blobs/{compressor}/{function/}{hash}/{size}{/metadata}
//
// The parser is strict so that every valid name has exactly one spelling,
// which String reproduces:
//   - the digest-function segment is present exactly when REAPI requires it
//     (BLAKE3); a segment REAPI says must be omitted ("sha256", "sha1", ...)
//     is rejected, and a hash without one must be SHA256's 64 hex characters;
//   - "compressed-blobs/identity/" is rejected (REAPI: the compressor is one
//     other than identity); other compressor names parse, and the service
//     decides which it supports;
//   - read names carry no metadata; instance segments may not be empty, "."
//     or ".." or a reserved keyword;
//   - the upload uuid is any segment that is not a keyword, "." or "..": REAPI asks
//     clients for a version 4 UUID, but refusing other ids would only break
//     clients, and the id's sole role is to keep concurrent uploads apart.
type ResourceName struct {
	// Instance is the instance name; "" when the name starts with the keyword.
	Instance string
	// UploadID is the client's uuid segment; "" for read names.
	UploadID string
	// Compressor is IDENTITY for "blobs/" names, else the compressor segment.
	Compressor repb.Compressor_Value
	// Digest is the blob's (uncompressed) digest.
	Digest digest.Digest
	// Metadata is the optional trailing metadata of upload names, without
	// its leading slash. Hearth ignores it.
	Metadata string
}

// IsUpload reports whether r names an upload (Write, QueryWriteStatus)
// rather than a blob to read.
func (r ResourceName) IsUpload() bool { return r.UploadID != "" }

// String returns the canonical resource name.
func (r ResourceName) String() string {
	var b strings.Builder
	if r.Instance != "" {
		b.WriteString(r.Instance)
		b.WriteByte('/')
	}
	if r.UploadID != "" {
		b.WriteString("uploads/")
		b.WriteString(r.UploadID)
		b.WriteByte('/')
	}
	if r.Compressor == repb.Compressor_IDENTITY {
		b.WriteString("blobs/")
	} else {
		b.WriteString("compressed-blobs/")
		b.WriteString(strings.ToLower(r.Compressor.String()))
		b.WriteByte('/')
	}
	if !functionOmitted(r.Digest.Function) {
		b.WriteString(digest.Lower(r.Digest.Function))
		b.WriteByte('/')
	}
	b.WriteString(r.Digest.String())
	if r.Metadata != "" {
		b.WriteByte('/')
		b.WriteString(r.Metadata)
	}
	return b.String()
}

// sessionKey identifies an upload session: the name without its optional
// metadata, which clients may vary between attempts of the same upload.
func (r ResourceName) sessionKey() string {
	r.Metadata = ""
	return r.String()
}

// ReadResourceName returns the name under which ByteStream.Read serves d.
func ReadResourceName(instance string, d digest.Digest, c repb.Compressor_Value) string {
	return ResourceName{Instance: instance, Compressor: c, Digest: d}.String()
}

// UploadResourceName returns the name under which ByteStream.Write stores d.
func UploadResourceName(instance, uploadID string, d digest.Digest, c repb.Compressor_Value) string {
	return ResourceName{Instance: instance, UploadID: uploadID, Compressor: c, Digest: d}.String()
}

// nameTerminators are the keywords that end the instance name. The other
// reserved keywords (instanceKeywords) may not appear in it at all.
var nameTerminators = map[string]bool{"blobs": true, "compressed-blobs": true, "uploads": true}

// omittedFunctions are the digest functions whose segment REAPI says MUST be
// omitted: a server infers them from the hash length.
var omittedFunctions = map[repb.DigestFunction_Value]bool{
	repb.DigestFunction_MD5:     true,
	repb.DigestFunction_MURMUR3: true,
	repb.DigestFunction_SHA1:    true,
	repb.DigestFunction_SHA256:  true,
	repb.DigestFunction_SHA384:  true,
	repb.DigestFunction_SHA512:  true,
	repb.DigestFunction_VSO:     true,
}

func functionOmitted(fn digest.Function) bool { return omittedFunctions[fn] }

// ParseResourceName parses a read or upload resource name. Errors wrap
// digest.ErrInvalid and name the resource name.
func ParseResourceName(name string) (ResourceName, error) {
	r, err := parseResourceName(name)
	if err != nil {
		return ResourceName{}, fmt.Errorf("%w: resource name %q: %s", digest.ErrInvalid, name, err)
	}
	return r, nil
}

// nameError is a parse failure; ParseResourceName adds the name and the
// sentinel.
type nameError string

func (e nameError) Error() string { return string(e) }

func nameErrorf(format string, args ...any) error { return nameError(fmt.Sprintf(format, args...)) }

func parseResourceName(name string) (ResourceName, error) {
	if name == "" {
		return ResourceName{}, nameError("is empty")
	}
	segs := strings.Split(name, "/")
	i := 0
	for ; i < len(segs) && !nameTerminators[segs[i]]; i++ {
		if why := instanceSegmentProblem(segs[i]); why != "" {
			return ResourceName{}, nameErrorf("instance name %s", why)
		}
	}
	if i == len(segs) {
		return ResourceName{}, nameError(`has no "blobs", "compressed-blobs" or "uploads" segment`)
	}
	r := ResourceName{Instance: strings.Join(segs[:i], "/")}
	rest := segs[i:]

	if rest[0] == "uploads" {
		if len(rest) < 2 || rest[1] == "" {
			return ResourceName{}, nameError(`has no uuid after "uploads/"`)
		}
		if instanceKeywords[rest[1]] {
			return ResourceName{}, nameErrorf("has the keyword %q where the upload uuid belongs", rest[1])
		}
		if rest[1] == "." || rest[1] == ".." {
			// Normalising the path would drop the uuid (or the instance).
			return ResourceName{}, nameErrorf("has %q where the upload uuid belongs; the uuid may not be \".\" or \"..\"", rest[1])
		}
		r.UploadID = rest[1]
		rest = rest[2:]
		if len(rest) == 0 || (rest[0] != "blobs" && rest[0] != "compressed-blobs") {
			return ResourceName{}, nameError(`has no "blobs" or "compressed-blobs" segment after the upload uuid`)
		}
	}

	if rest[0] == "compressed-blobs" {
		if len(rest) < 2 {
			return ResourceName{}, nameError(`has no compressor after "compressed-blobs/"`)
		}
		c, err := parseCompressor(rest[1])
		if err != nil {
			return ResourceName{}, err
		}
		r.Compressor = c
		rest = rest[2:]
	} else {
		rest = rest[1:] // "blobs"
	}

	d, rest, err := parseNameDigest(rest)
	if err != nil {
		return ResourceName{}, err
	}
	r.Digest = d
	if len(rest) > 0 {
		if !r.IsUpload() {
			return ResourceName{}, nameErrorf("has %q after the size; only upload names carry metadata", strings.Join(rest, "/"))
		}
		r.Metadata = strings.Join(rest, "/")
		if r.Metadata == "" {
			return ResourceName{}, nameError("ends with a slash")
		}
	}
	return r, nil
}

// parseCompressor parses the compressor segment of a compressed-blobs name:
// the lower-case name of a Compressor value other than identity (REAPI:
// uncompressed data uses "blobs/").
func parseCompressor(seg string) (repb.Compressor_Value, error) {
	if seg == "identity" {
		return 0, nameError(`uses compressor "identity"; uncompressed blobs are named "blobs/...", not "compressed-blobs/identity/..."`)
	}
	if v, ok := repb.Compressor_Value_value[strings.ToUpper(seg)]; ok && strings.ToLower(seg) == seg {
		return repb.Compressor_Value(v), nil
	}
	return 0, nameErrorf("has unknown compressor %q", seg)
}

// parseNameDigest parses "{function/}{hash}/{size}" from the front of segs
// and returns the segments after it.
func parseNameDigest(segs []string) (digest.Digest, []string, error) {
	if len(segs) == 0 {
		return digest.Digest{}, nil, nameError("has no hash and size")
	}
	fn := digest.SHA256
	if v, ok := repb.DigestFunction_Value_value[strings.ToUpper(segs[0])]; ok && strings.ToLower(segs[0]) == segs[0] {
		fn = repb.DigestFunction_Value(v)
		switch {
		case fn == repb.DigestFunction_UNKNOWN:
			return digest.Digest{}, nil, nameError(`has digest function segment "unknown"`)
		case functionOmitted(fn):
			return digest.Digest{}, nil, nameErrorf("has digest function segment %q, which REAPI says must be omitted (the function is inferred from the hash length)", segs[0])
		}
		if _, err := digest.Resolve(fn); err != nil {
			return digest.Digest{}, nil, nameErrorf("has digest function %q, which is not supported (supported: sha256 (no segment), blake3)", segs[0])
		}
		segs = segs[1:]
	}
	if len(segs) < 2 {
		return digest.Digest{}, nil, nameError("has no hash/size")
	}
	hash, size := segs[0], segs[1]
	if fn == digest.SHA256 && len(hash) != 64 {
		return digest.Digest{}, nil, nameErrorf("has hash %q of %d characters; without a digest function segment only SHA256 (64 lower-case hex characters) is accepted", hash, len(hash))
	}
	if !isCanonicalDecimal(size) {
		return digest.Digest{}, nil, nameErrorf("has size %q, which is not a decimal integer without sign or leading zeros", size)
	}
	d, err := digest.Parse(fn, hash+"/"+size)
	if err != nil {
		return digest.Digest{}, nil, nameError(strings.TrimPrefix(err.Error(), digest.ErrInvalid.Error()+": "))
	}
	return d, segs[2:], nil
}

// isCanonicalDecimal reports whether s is a non-negative decimal integer in
// its one canonical spelling ("0", "42"; not "", "-0", "+1", "007").
func isCanonicalDecimal(s string) bool {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
