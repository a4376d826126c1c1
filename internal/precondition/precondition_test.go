package precondition

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

func TestMissing(t *testing.T) {
	sha := digest.Compute(digest.SHA256, []byte("a"))
	b3 := digest.Compute(digest.BLAKE3, []byte("a"))
	st := Missing(&cas.MissingError{Digests: []digest.Digest{sha, b3, sha}})
	if st.Code() != codes.FailedPrecondition {
		t.Fatalf("code = %v", st.Code())
	}
	var subjects []string
	for _, d := range st.Details() {
		pf, ok := d.(*errdetails.PreconditionFailure)
		if !ok {
			continue
		}
		for _, v := range pf.GetViolations() {
			if v.GetType() != "MISSING" {
				t.Errorf("violation type %q", v.GetType())
			}
			subjects = append(subjects, v.GetSubject())
		}
	}
	want := []string{"blobs/" + sha.Hash + "/1", "blobs/blake3/" + b3.Hash + "/1"}
	if len(subjects) != 2 || subjects[0] != want[0] || subjects[1] != want[1] {
		t.Fatalf("subjects = %q, want %q (each once, BLAKE3 with its function segment)", subjects, want)
	}
}
