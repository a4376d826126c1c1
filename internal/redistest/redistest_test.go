package redistest

import "testing"

func TestRestartKeepsData(t *testing.T) {
	s := Start(t)
	if err := ping(s.Addr); err != nil {
		t.Fatalf("ping after start: %v", err)
	}
	s.Restart()
	if err := ping(s.Addr); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
	s.Stop()
	if err := ping(s.Addr); err == nil {
		t.Fatal("server still answers after Stop")
	}
}
