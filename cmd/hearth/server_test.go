package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-build/hearth/internal/redistest"
)

// TestOpenServerFailureReleasesEverything: a start that fails late (its
// listen address is taken) releases what it had opened: the data-dir lock
// (a second start succeeds) and the Redis action cache's connections.
func TestOpenServerFailureReleasesEverything(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	clients := func() int {
		list, err := rdb.ClientList(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(list, "\n")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "server.json5")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`{action_cache: {redis: {url: %q}}}`, rs.URL(0))), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(listen string) (*server, error) {
		fs := flag.NewFlagSet("server", flag.ContinueOnError)
		var f serverFlags
		f.register(fs)
		if err := fs.Parse([]string{"--config-server", cfg, "--data", filepath.Join(dir, "data"), "--listen", listen}); err != nil {
			t.Fatal(err)
		}
		if _, err := resolveServerFlags(fs, &f); err != nil {
			t.Fatal(err)
		}
		return openServer(f, slog.New(slog.DiscardHandler))
	}
	before := clients()
	if _, err := open(taken.Addr().String()); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("start on a taken address: %v, want a listen error", err)
	}
	if n := clients(); n != before {
		t.Errorf("after the failed start Redis has %d clients, %d before", n, before)
	}
	s, err := open("127.0.0.1:0")
	if err != nil {
		t.Fatalf("start after a failed one: %v", err)
	}
	s.close()
}
