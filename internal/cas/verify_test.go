package cas

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hearth-build/hearth/internal/digest"
)

func TestVerifying(t *testing.T) {
	ctx := context.Background()
	data := []byte("verified content")
	other := []byte("tampered content") // same length, other hash
	tests := []struct {
		name         string
		writes       [][]byte
		wantWriteErr bool   // a write fails early, before Commit
		wantInErr    string // Commit's error names this
		wantStored   bool
	}{
		{"match", [][]byte{data[:5], data[5:]}, false, "", true},
		{"wrong hash", [][]byte{other}, false, "hash to", false},
		{"short", [][]byte{data[:7]}, false, "got 7 bytes", false},
		{"long", [][]byte{data, []byte("!")}, true, "more than its size", false},
		{"long in one write", [][]byte{append(append([]byte{}, data...), '!')}, true, "more than its size", false},
	}
	for _, fn := range digest.Supported {
		for _, tt := range tests {
			t.Run(fn.String()+"/"+tt.name, func(t *testing.T) {
				dir := t.TempDir()
				disk := newDisk(t, dir, 0)
				s := NewVerifying(disk)
				dg := digest.Compute(fn, data)
				w, err := s.Create(ctx, dg)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				var werr error
				for _, p := range tt.writes {
					if _, werr = w.Write(p); werr != nil {
						break
					}
				}
				if (werr != nil) != tt.wantWriteErr {
					t.Fatalf("Write error = %v, want error %v", werr, tt.wantWriteErr)
				}
				if werr != nil && !errors.Is(werr, ErrMismatch) {
					t.Errorf("Write error %v does not wrap ErrMismatch", werr)
				}
				cerr := w.Commit()
				if tt.wantStored {
					if cerr != nil {
						t.Fatalf("Commit: %v", cerr)
					}
					if got := mustGet(t, s, dg); string(got) != string(data) {
						t.Errorf("stored %q", got)
					}
					return
				}
				if !errors.Is(cerr, ErrMismatch) || !strings.Contains(cerr.Error(), tt.wantInErr) || !strings.Contains(cerr.Error(), dg.Hash) {
					t.Errorf("Commit error %v: want ErrMismatch naming %q and the expected hash", cerr, tt.wantInErr)
				}
				if m := missing(t, s, dg); len(m) != 1 || disk.Count() != 0 || countBlobFiles(t, dir) != 0 {
					t.Errorf("a mismatching blob was stored: missing %v, count %d", m, disk.Count())
				}
				if n := tmpEntries(t, dir); len(n) != 0 {
					t.Errorf("rejected upload left temp files before Close: %v", n)
				}
			})
		}
	}
}

func TestVerifyingRejectsWrongBytesForPresentBlob(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t, t.TempDir(), 0)
	s := NewVerifying(disk)
	data := []byte("the real bytes")
	dg := mustPut(t, s, digest.SHA256, data)
	err := Put(ctx, s, dg, []byte("the fake bytes"))
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("Put of wrong bytes under a present digest: %v, want ErrMismatch", err)
	}
	if got := mustGet(t, s, dg); string(got) != string(data) {
		t.Errorf("blob reads %q", got)
	}
}

func TestVerifyingEmptyAndInvalid(t *testing.T) {
	ctx := context.Background()
	s := NewVerifying(newDisk(t, t.TempDir(), 0))
	for _, fn := range digest.Supported {
		if err := Put(ctx, s, digest.Empty(fn), nil); err != nil {
			t.Errorf("Put(empty %s): %v", fn, err)
		}
	}
	if _, err := s.Create(ctx, digest.Digest{Function: digest.SHA256, Hash: "abc", Size: 3}); !errors.Is(err, digest.ErrInvalid) {
		t.Errorf("Create with a bad hash: %v, want ErrInvalid", err)
	}
}
