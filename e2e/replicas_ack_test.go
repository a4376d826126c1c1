package e2e

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/redistest"
	"github.com/hearth-build/hearth/internal/s3test"
)

// TestReplicaKillKeepsAcknowledgedBlobs: clients upload to replica A while
// it is killed with SIGKILL; every upload A acknowledged reads back from
// replica B with the same bytes (A acknowledges a write only once the
// object store has it, so its local disk dying with it loses nothing).
func TestReplicaKillKeepsAcknowledgedBlobs(t *testing.T) {
	ctx := t.Context()
	s3 := s3test.Start(t)
	rds := redistest.Start(t)
	cfg, env := writeStoresConfig(t, s3, rds.URL(0))
	a := startServer(t, "server", t.TempDir(), env, "--config-server", cfg)
	b := startServer(t, "server", t.TempDir(), env, "--config-server", cfg)
	ca := dial(t, a.GRPCAddr)

	blobs := randomBlobs(newRand(t), 400)
	var (
		mu    sync.Mutex
		acked []testBlob
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(blobs) {
					return
				}
				if err := ca.byteStreamWrite(ctx, blobs[i], 64<<10); err != nil {
					return // A is gone: this one was not acknowledged
				}
				mu.Lock()
				acked = append(acked, blobs[i])
				mu.Unlock()
			}
		}()
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d uploads acknowledged in a minute\nA:\n%s", n, a.log.tail(30))
		}
	}
	a.kill()
	wg.Wait()
	if len(acked) == len(blobs) {
		t.Fatal("every upload finished before the kill; none was cut")
	}
	t.Logf("A acknowledged %d of %d uploads before it was killed", len(acked), len(blobs))
	verifyAll(ctx, t, dial(t, b.GRPCAddr), acked)
}
