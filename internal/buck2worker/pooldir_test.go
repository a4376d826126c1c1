package buck2worker

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPoolDirsOfDeadBridgesAreRemoved(t *testing.T) {
	parent := t.TempDir()
	live, err := NewPoolDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := NewPoolDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []*PoolDir{live, dead} {
		if err := os.MkdirAll(d.Path, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dead.lock.Close() // its process died without cleaning up
	next, err := NewPoolDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Remove()
	if _, err := os.Stat(filepath.Dir(dead.Path)); !os.IsNotExist(err) {
		t.Errorf("the dead bridge's directory survived: %v", err)
	}
	if _, err := os.Stat(live.Path); err != nil {
		t.Errorf("the live bridge's directory was removed: %v", err)
	}
	live.Remove()
	if _, err := os.Stat(filepath.Dir(live.Path)); !os.IsNotExist(err) {
		t.Errorf("Remove left %s: %v", live.Path, err)
	}
}
