package cas

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/prometheus/client_golang/prometheus"
)

// counterValue returns the value of the counter name (with label op=op if op
// is not empty) gathered from reg, or 0 if it has not been set.
func counterValue(t *testing.T, reg *prometheus.Registry, name, op string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := op == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" && l.GetValue() == op {
					match = true
				}
			}
			if match {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	s := NewMetrics(NewVerifying(newDisk(t, t.TempDir(), 0)), reg)

	a := mustPut(t, s, digest.SHA256, []byte("counted"))                        // 7 bytes
	if err := Put(ctx, s, a, []byte("tampere")); !errors.Is(err, ErrMismatch) { // 7 bytes, rejected
		t.Fatalf("tampered put: %v", err)
	}
	absent := digest.Compute(digest.SHA256, []byte("absent"))
	missing(t, s, a, absent, digest.Empty(digest.BLAKE3))
	r, err := s.Open(ctx, a, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := s.Open(ctx, absent, 0); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, a, 99); !errors.Is(err, ErrOutOfRange) {
		t.Fatal(err)
	}

	tests := []struct {
		name, op string
		want     float64
	}{
		{"hearth_cas_find_missing_digests_total", "", 3},
		{"hearth_cas_find_missing_missing_total", "", 1},
		{"hearth_cas_blobs_read_total", "", 1},
		{"hearth_cas_bytes_read_total", "", 5},
		{"hearth_cas_read_misses_total", "", 1},
		{"hearth_cas_blobs_written_total", "", 1},
		{"hearth_cas_bytes_written_total", "", 14},
		{"hearth_cas_errors_total", "commit", 1},
		{"hearth_cas_errors_total", "open", 1}, // out of range; not found is not an error
	}
	for _, tt := range tests {
		if got := counterValue(t, reg, tt.name, tt.op); got != tt.want {
			t.Errorf("%s{op=%q} = %v, want %v", tt.name, tt.op, got, tt.want)
		}
	}
}

func TestMetricsSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	s1 := NewMetrics(newDisk(t, t.TempDir(), 0), reg)
	s2 := NewMetrics(newDisk(t, t.TempDir(), 0), reg) // must not panic
	mustPut(t, s1, digest.SHA256, []byte("one"))
	mustPut(t, s2, digest.SHA256, []byte("two"))
	if got := counterValue(t, reg, "hearth_cas_blobs_written_total", ""); got != 2 {
		t.Errorf("blobs written = %v, want 2 (counters shared)", got)
	}
	// A nil registry counts without exporting.
	mustPut(t, NewMetrics(newDisk(t, t.TempDir(), 0), nil), digest.SHA256, []byte("three"))
}
