package buck2worker

import (
	"slices"
	"testing"
)

func TestMergeEnv(t *testing.T) {
	base := []string{"PATH=/bin", "HOME=/home/u", "TMPDIR=/tmp"}
	for _, tc := range []struct {
		name          string
		request, skip []string
		want          []string
	}{
		{"request overrides and adds", []string{"HOME=/h", "A=1"}, nil, []string{"PATH=/bin", "HOME=/h", "TMPDIR=/tmp", "A=1"}},
		{"skipped names keep the base value", []string{"TMPDIR=/scratch/1", "A=1"}, DefaultVolatileEnv, []string{"PATH=/bin", "HOME=/home/u", "TMPDIR=/tmp", "A=1"}},
		{"later entry wins", []string{"A=1", "A=2"}, nil, []string{"PATH=/bin", "HOME=/home/u", "TMPDIR=/tmp", "A=2"}},
		{"empty value kept", []string{"PATH="}, nil, []string{"PATH=", "HOME=/home/u", "TMPDIR=/tmp"}},
	} {
		if got := mergeEnv(base, tc.request, tc.skip); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := WithoutVar([]string{"A=1", "WORKER_SOCKET=/s", "B=2"}, SocketEnv); !slices.Equal(got, []string{"A=1", "B=2"}) {
		t.Errorf("WithoutVar: %q", got)
	}
}

func TestLimitedBuffer(t *testing.T) {
	b := &limitedBuffer{max: 5}
	b.Write([]byte("abc"))
	b.Write([]byte("defg"))
	if got := b.String(); got != "abcde\n[hearth buck2-worker: output truncated]\n" {
		t.Errorf("%q", got)
	}
}
