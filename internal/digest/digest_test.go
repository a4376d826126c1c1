package digest

import (
	"errors"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

const emptySHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
const emptyBLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"

func TestEmpty(t *testing.T) {
	if got := Empty(SHA256).Hash; got != emptySHA {
		t.Errorf("sha256 empty = %s", got)
	}
	if got := Empty(BLAKE3).Hash; got != emptyBLAKE3 {
		t.Errorf("blake3 empty = %s", got)
	}
	if !Empty(BLAKE3).IsEmpty() || Compute(SHA256, []byte("x")).IsEmpty() {
		t.Error("IsEmpty wrong")
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name, in string
		fn       Function
		wantErr  bool
		wantSize int64
	}{
		{"ok", emptySHA + "/0", SHA256, false, 0},
		{"unknown fn means sha256", emptySHA + "/12", repb.DigestFunction_UNKNOWN, false, 12},
		{"blake3", emptyBLAKE3 + "/5", BLAKE3, false, 5},
		{"no slash", emptySHA, SHA256, true, 0},
		{"negative", emptySHA + "/-1", SHA256, true, 0},
		{"plus", emptySHA + "/+1", SHA256, true, 0},
		{"minus zero", emptySHA + "/-0", SHA256, true, 0},
		{"leading zero", emptySHA + "/01", SHA256, true, 0},
		{"empty size", emptySHA + "/", SHA256, true, 0},
		{"upper hex", strings.ToUpper(emptySHA) + "/0", SHA256, true, 0},
		{"short", emptySHA[:63] + "/0", SHA256, true, 0},
		{"long", emptySHA + "a/0", SHA256, true, 0},
		{"non hex", strings.Repeat("g", 64) + "/0", SHA256, true, 0},
		{"md5 unsupported", strings.Repeat("a", 32) + "/0", repb.DigestFunction_MD5, true, 0},
		{"overflow", emptySHA + "/99999999999999999999", SHA256, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse(tt.fn, tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Parse(%q) err = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if err == nil && d.Size != tt.wantSize {
				t.Errorf("size = %d", d.Size)
			}
		})
	}
}

func TestFromProtoNil(t *testing.T) {
	if _, err := FromProto(SHA256, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nil digest: %v", err)
	}
}

func TestFunctionNames(t *testing.T) {
	if fn, ok := FunctionFromLower("blake3"); !ok || fn != BLAKE3 {
		t.Error("blake3")
	}
	if _, ok := FunctionFromLower("BLAKE3"); ok {
		t.Error("upper case accepted")
	}
	if _, ok := FunctionFromLower("md5"); ok {
		t.Error("md5 accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(emptySHA + "/0")
	f.Add("x/y")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := Parse(SHA256, s)
		if err == nil && d.String() != s {
			t.Fatalf("round trip %q -> %q", s, d.String())
		}
	})
}

func TestResourcePath(t *testing.T) {
	if got := Empty(SHA256).ResourcePath(); got != emptySHA+"/0" {
		t.Errorf("sha256: %q", got)
	}
	if got := Empty(BLAKE3).ResourcePath(); got != "blake3/"+emptyBLAKE3+"/0" {
		t.Errorf("blake3: %q", got)
	}
}
