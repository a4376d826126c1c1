package workerpool

import (
	"testing"

	"github.com/hearth-build/hearth/internal/workerproto"
)

// A memo stays with its worker process across leases and dies with it; only
// a worker serving one request at a time in its own workspace keeps one.
func TestLeaseMemo(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*Spec)
		keeps bool
	}{
		{"singleplex", func(*Spec) {}, true},
		{"multiplex", func(s *Spec) { s.Multiplex = true }, false},
		{"multiplex sandboxing", func(s *Spec) { s.Multiplex, s.Sandboxing = true, true }, false},
		{"own work dir", func(s *Spec) { s.WorkDir = t.TempDir() }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, Options{MaxInvocations: 2})
			spec := workerSpec(t, "k", workerproto.Proto)
			tc.setup(spec)
			first := acquire(t, p, spec)
			if first.Memo() != nil || first.KeepsMemo() != tc.keeps {
				t.Fatalf("fresh worker: memo %v, keeps %v", first.Memo(), first.KeepsMemo())
			}
			do(t, first, "--counter")
			first.SetMemo("state")
			first.Release()

			second := acquire(t, p, spec)
			want := any(nil)
			if tc.keeps {
				want = "state"
			}
			if second.PID() != first.PID() || second.Memo() != want {
				t.Fatalf("second lease: pid %d (first %d), memo %v, want %v", second.PID(), first.PID(), second.Memo(), want)
			}
			do(t, second, "--counter")
			second.Release() // the second invocation: the worker is retired

			third := acquire(t, p, spec)
			defer third.Release()
			if third.PID() == first.PID() || third.Memo() != nil {
				t.Fatalf("new worker: pid %d (old %d), memo %v", third.PID(), first.PID(), third.Memo())
			}
		})
	}
}
