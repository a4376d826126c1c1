package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/redistest"
)

// Two `hearth server` replicas with action_cache.redis share one action cache:
// a result written at A is read at B, and survives a Redis restart. Each
// replica still checks completeness against its own CAS, so a result whose
// output is not in B's CAS is a miss at B until the blob is there.
func TestRedisActionCacheSharedByReplicas(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rds := redistest.Start(t)
	cfg := filepath.Join(t.TempDir(), "server.json5")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`{action_cache: {redis: {url: %q, ttl: "1h"}}}`, rds.URL(0))), 0o644); err != nil {
		t.Fatal(err)
	}
	dataA := t.TempDir()
	a := startServer(t, "server", dataA, nil, "--config-server", cfg)
	b := startServer(t, "server", t.TempDir(), nil, "--config-server", cfg)
	// Redis replaces the disk action cache: its directory is not created.
	if _, err := os.Stat(filepath.Join(dataA, "ac")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("data dir has ac/ although action_cache.redis is configured: %v", err)
	}
	ca, cb := dial(t, a.GRPCAddr), dial(t, b.GRPCAddr)
	acA, acB := repb.NewActionCacheClient(ca.conn), repb.NewActionCacheClient(cb.conn)

	out := newTestBlob([]byte("output of the shared action"))
	action := newTestBlob([]byte("shared action"))
	if err := ca.batchUpload(ctx, []testBlob{out, action}); err != nil {
		t.Fatal(err)
	}
	want := &repb.ActionResult{ExitCode: 0, OutputFiles: []*repb.OutputFile{{Path: "out", Digest: out.digest}}}
	if _, err := acA.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action.digest, ActionResult: want, DigestFunction: repb.DigestFunction_SHA256}); err != nil {
		t.Fatalf("UpdateActionResult at A: %v", err)
	}
	get := func(c repb.ActionCacheClient) (*repb.ActionResult, error) {
		return c.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action.digest, DigestFunction: repb.DigestFunction_SHA256})
	}
	if _, err := get(acB); status.Code(err) != codes.NotFound {
		t.Fatalf("GetActionResult at B before its CAS has the output: %v, want NotFound (completeness check)", err)
	}
	if err := cb.batchUpload(ctx, []testBlob{out}); err != nil {
		t.Fatal(err)
	}
	got, err := get(acB)
	if err != nil {
		t.Fatalf("GetActionResult at B: %v", err)
	}
	if !proto.Equal(got.GetOutputFiles()[0], want.OutputFiles[0]) || got.ExitCode != 0 {
		t.Fatalf("B returned %v, want %v", got, want)
	}
	rds.Restart()
	// The replicas' clients reconnect; the acknowledged result is still there.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err = get(acB)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || !proto.Equal(got.GetOutputFiles()[0], want.OutputFiles[0]) {
		t.Fatalf("GetActionResult at B after a Redis restart: %v, %v", got, err)
	}
	if _, err := get(acA); err != nil {
		t.Fatalf("GetActionResult at A after a Redis restart: %v", err)
	}
}

// TestRedisActionCacheUnreachableFailsStart: a configured Redis (action cache
// or scheduler state) that does not answer stops the start with a message
// naming the setting, instead of a server whose every lookup fails.
func TestRedisActionCacheUnreachableFailsStart(t *testing.T) {
	for _, setting := range []string{"action_cache", "scheduler"} {
		t.Run(setting, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "server.json5")
			// A port that was free a moment ago: nothing answers there.
			url := "redis://" + freeLoopbackAddr(t) + "/0"
			if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`{%s: {redis: {url: %q}}}`, setting, url)), 0o644); err != nil {
				t.Fatal(err)
			}
			p := launchHearth(t, t.TempDir(), nil, "server", "--listen", "127.0.0.1:0", "--http", "", "--data", t.TempDir(), "--config-server", cfg)
			p.waitExit(1)
			if out := p.log.String(); !strings.Contains(out, setting+".redis.url") || !strings.Contains(out, "does not answer") {
				t.Errorf("the refusal does not name the setting:\n%s", out)
			}
		})
	}
}
