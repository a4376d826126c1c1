package reapi

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/digest"
)

var (
	rnHash   = strings.Repeat("ab", 32) // 64 lower-case hex characters
	rnSHA256 = digest.Digest{Function: digest.SHA256, Hash: rnHash, Size: 42}
	rnBLAKE3 = digest.Digest{Function: digest.BLAKE3, Hash: rnHash, Size: 42}
	rnUUID   = "3e1c5a4e-8f5b-4b2a-9c61-0d2f7a9b1c3d"
)

func TestParseResourceNameValid(t *testing.T) {
	zstd := repb.Compressor_ZSTD
	tests := []struct {
		name string
		want ResourceName
	}{
		{"blobs/" + rnHash + "/42", ResourceName{Digest: rnSHA256}},
		{"blobs/" + rnHash + "/0", ResourceName{Digest: digest.Digest{Function: digest.SHA256, Hash: rnHash}}},
		{"main/blobs/" + rnHash + "/42", ResourceName{Instance: "main", Digest: rnSHA256}},
		{"a/b/c/blobs/" + rnHash + "/42", ResourceName{Instance: "a/b/c", Digest: rnSHA256}},
		{"blobs/blake3/" + rnHash + "/42", ResourceName{Digest: rnBLAKE3}},
		{"compressed-blobs/zstd/" + rnHash + "/42", ResourceName{Compressor: zstd, Digest: rnSHA256}},
		{"x/compressed-blobs/zstd/blake3/" + rnHash + "/42", ResourceName{Instance: "x", Compressor: zstd, Digest: rnBLAKE3}},
		{"compressed-blobs/deflate/" + rnHash + "/42", ResourceName{Compressor: repb.Compressor_DEFLATE, Digest: rnSHA256}},
		{"uploads/" + rnUUID + "/blobs/" + rnHash + "/42", ResourceName{UploadID: rnUUID, Digest: rnSHA256}},
		{"i/j/uploads/" + rnUUID + "/blobs/blake3/" + rnHash + "/42", ResourceName{Instance: "i/j", UploadID: rnUUID, Digest: rnBLAKE3}},
		{"uploads/" + rnUUID + "/compressed-blobs/zstd/" + rnHash + "/42", ResourceName{UploadID: rnUUID, Compressor: zstd, Digest: rnSHA256}},
		{"uploads/" + rnUUID + "/blobs/" + rnHash + "/42/meta", ResourceName{UploadID: rnUUID, Digest: rnSHA256, Metadata: "meta"}},
		{"uploads/" + rnUUID + "/blobs/" + rnHash + "/42/m/e/t/a", ResourceName{UploadID: rnUUID, Digest: rnSHA256, Metadata: "m/e/t/a"}},
		// Metadata is opaque: keywords in it do not matter.
		{"uploads/u/blobs/" + rnHash + "/42/blobs/uploads", ResourceName{UploadID: "u", Digest: rnSHA256, Metadata: "blobs/uploads"}},
		// Instance segments that merely contain keywords are fine.
		{"blobsx/my-uploads/blobs/" + rnHash + "/42", ResourceName{Instance: "blobsx/my-uploads", Digest: rnSHA256}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseResourceName(tt.name)
			if err != nil {
				t.Fatalf("ParseResourceName: %v", err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			if s := got.String(); s != tt.name {
				t.Fatalf("String() = %q, want the input back", s)
			}
		})
	}
}

func TestParseResourceNameInvalid(t *testing.T) {
	h := rnHash
	tests := []struct {
		name, wantInMsg string
	}{
		{"", "empty"},
		{"blobs", "hash"},
		{"blobs/", "hash"},
		{"blobs/" + h, "hash/size"},
		{"blobs/" + h + "/", "size"},
		{"blobs/" + h + "/-1", "size"},
		{"blobs/" + h + "/-0", "size"},
		{"blobs/" + h + "/+1", "size"},
		{"blobs/" + h + "/01", "size"},
		{"blobs/" + h + "/1x", "size"},
		{"blobs/" + h + "/99999999999999999999", "size"},
		{"blobs/" + strings.ToUpper(h) + "/1", "hex"},
		{"blobs/" + h[:40] + "/1", "SHA256"},
		{"blobs/" + h + "00/1", "SHA256"},
		{"blobs/" + h[:63] + "g/1", "hex"},
		{"blobs/" + h + "/1/extra", "only upload names"},
		{"blobs/sha256/" + h + "/1", "must be omitted"},
		{"blobs/sha1/" + h[:40] + "/1", "must be omitted"},
		{"blobs/md5/" + h[:32] + "/1", "must be omitted"},
		{"blobs/unknown/" + h + "/1", "unknown"},
		{"blobs/sha256tree/" + h + "/1", "not supported"},
		{"blobs/BLAKE3/" + h + "/1", "characters"},
		{"blobs/blake3/" + h[:10] + "/1", "characters"},
		{"blobs/blake3/" + h, "hash/size"},
		{"compressed-blobs", "compressor"},
		{"compressed-blobs/identity/" + h + "/1", "identity"},
		{"compressed-blobs/gzip/" + h + "/1", "unknown compressor"},
		{"compressed-blobs/ZSTD/" + h + "/1", "unknown compressor"},
		{"compressed-blobs/zstd", "hash"},
		{"compressed-blobs/zstd/" + h + "/1/meta", "only upload names"},
		{"uploads", "uuid"},
		{"uploads/", "uuid"},
		{"uploads/u", `"blobs"`},
		{"uploads/u/" + h + "/1", `"blobs"`},
		{"uploads/blobs/" + h + "/1", "keyword"},
		{"uploads/u/blobs/" + h + "/1/", "slash"},
		{"uploads/u/uploads/v/blobs/" + h + "/1", `"blobs"`},
		{"uploads/u/compressed-blobs/identity/" + h + "/1", "identity"},
		{"/blobs/" + h + "/1", "empty path segment"},
		{"a//blobs/" + h + "/1", "empty path segment"},
		{"a/operations/blobs/" + h + "/1", "reserved"},
		{"actions/blobs/" + h + "/1", "reserved"},
		{"actionResults/blobs/" + h + "/1", "reserved"},
		{"capabilities/blobs/" + h + "/1", "reserved"},
		{"main/" + h + "/1", `no "blobs"`},
		{"main", `no "blobs"`},
		{"actions/" + h + "/1", "reserved"},
		// Dot segments: a path normaliser would turn them into another name.
		{"./blobs/" + h + "/1", `"."`},
		{"../blobs/" + h + "/1", `".."`},
		{"a/./blobs/" + h + "/1", `"."`},
		{"a/../blobs/" + h + "/1", `".."`},
		{"a/b/../compressed-blobs/zstd/" + h + "/1", `".."`},
		{"../uploads/u/blobs/" + h + "/1", `".."`},
		{"a/./uploads/u/blobs/" + h + "/1", `"."`},
		{"uploads/./blobs/" + h + "/1", "uuid"},
		{"uploads/../blobs/" + h + "/1", "uuid"},
		{"i/uploads/../compressed-blobs/zstd/" + h + "/1", "uuid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseResourceName(tt.name)
			if err == nil {
				t.Fatalf("ParseResourceName accepted it: %+v", got)
			}
			if !errors.Is(err, digest.ErrInvalid) {
				t.Errorf("error %v does not wrap digest.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), strconv.Quote(tt.name)) {
				t.Errorf("error %q does not name the resource name", err)
			}
			if !strings.Contains(err.Error(), tt.wantInMsg) {
				t.Errorf("error %q does not mention %q", err, tt.wantInMsg)
			}
		})
	}
}

func TestResourceNameBuilders(t *testing.T) {
	if got, want := ReadResourceName("a/b", rnBLAKE3, repb.Compressor_ZSTD), "a/b/compressed-blobs/zstd/blake3/"+rnHash+"/42"; got != want {
		t.Errorf("ReadResourceName = %q, want %q", got, want)
	}
	if got, want := UploadResourceName("", "u", rnSHA256, repb.Compressor_IDENTITY), "uploads/u/blobs/"+rnHash+"/42"; got != want {
		t.Errorf("UploadResourceName = %q, want %q", got, want)
	}
	a, _ := ParseResourceName(UploadResourceName("", "u", rnSHA256, 0) + "/meta1")
	b, _ := ParseResourceName(UploadResourceName("", "u", rnSHA256, 0) + "/meta2")
	if a.sessionKey() != b.sessionKey() {
		t.Errorf("metadata changes the session key: %q vs %q", a.sessionKey(), b.sessionKey())
	}
}

// FuzzParseResourceName checks that no input panics the parser, that every
// accepted name round-trips exactly through String, and that every rejection
// names the input.
func FuzzParseResourceName(f *testing.F) {
	seeds := []string{
		"blobs/" + rnHash + "/42",
		"a/b/blobs/blake3/" + rnHash + "/42",
		"compressed-blobs/zstd/" + rnHash + "/0",
		"uploads/" + rnUUID + "/blobs/" + rnHash + "/42/meta",
		"i/uploads/u/compressed-blobs/zstd/blake3/" + rnHash + "/7/x/y",
		"blobs/sha256/" + rnHash + "/1",
		"uploads//blobs/" + rnHash + "/1",
		"operations/blobs/x/1",
		"",
		"/",
		"blobs/" + rnHash + "/-0",
		"a/../blobs/" + rnHash + "/1",
		"uploads/./blobs/" + rnHash + "/1",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		rn, err := ParseResourceName(name)
		if err != nil {
			if !errors.Is(err, digest.ErrInvalid) || !strings.Contains(err.Error(), strconv.Quote(name)) {
				t.Fatalf("error %q for %q does not wrap ErrInvalid and name the input", err, name)
			}
			return
		}
		if s := rn.String(); s != name {
			t.Fatalf("ParseResourceName(%q).String() = %q", name, s)
		}
		again, err := ParseResourceName(rn.String())
		if err != nil || again != rn {
			t.Fatalf("reparse of %q = %+v, %v; want %+v", rn.String(), again, err, rn)
		}
		for _, seg := range append(strings.Split(rn.Instance, "/"), rn.UploadID) {
			if seg == "." || seg == ".." {
				t.Fatalf("accepted the dot segment %q in the instance or uuid of %q", seg, name)
			}
		}
		if _, err := digest.New(rn.Digest.Function, rn.Digest.Hash, rn.Digest.Size); err != nil {
			t.Fatalf("accepted an invalid digest in %q: %v", name, err)
		}
	})
}

func TestValidateInstanceName(t *testing.T) {
	for _, name := range []string{"", "main", "a/b/c", "blobsx", "my.instance", "a/.b/c..", "..."} {
		if err := validateInstanceName(name); err != nil {
			t.Errorf("validateInstanceName(%q) = %v, want nil", name, err)
		}
	}
	for name, want := range map[string]string{
		".":         `"."`,
		"..":        `".."`,
		"a/.":       `"."`,
		"../a":      `".."`,
		"a/../b":    `".."`,
		"/a":        "empty path segment",
		"a/":        "empty path segment",
		"a//b":      "empty path segment",
		"a/blobs":   "reserved",
		"uploads/x": "reserved",
	} {
		err := validateInstanceName(name)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), strconv.Quote(name)) {
			t.Errorf("validateInstanceName(%q) = %v, want INVALID_ARGUMENT naming it and mentioning %s", name, err, want)
		}
	}
}
