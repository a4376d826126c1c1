package workerpolicy

import "github.com/hearth-build/hearth/internal/workerpool"

// ReleaseLater ends lease in the background: it marks the lease as being
// released (workerpool.Lease.Releasing, so the next Acquire of the key waits
// for this worker rather than start another) and runs release, which must
// end the lease (clean the workspace, then Release or Discard), on its own
// goroutine. The builder calls it once an action's result is complete, so
// the cleaning after a request is off the client's critical path. Close
// waits for every release started here.
func (w *Workers) ReleaseLater(lease *workerpool.Lease, release func()) {
	lease.Releasing()
	w.releases.Add(1)
	go func() {
		defer w.releases.Done()
		release()
	}()
}

// Settle waits for the releases ReleaseLater started: afterwards every
// lease they held has ended and the pool's state reflects it (tests and
// /status readers that need an exact count use it).
func (w *Workers) Settle() { w.releases.Wait() }
