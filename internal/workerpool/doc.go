// Package workerpool owns the long-lived persistent worker processes of an
// executor: it starts them (optionally under bubblewrap), keeps them in pools
// keyed by a pool key, hands one out per request as a Lease, carries one
// WorkRequest/WorkResponse exchange per lease over the Bazel worker protocol,
// and stops them when they fail, age out, idle out or use too much memory.
//
// It does not stage inputs or collect outputs: the caller (the builder) does
// that in Lease.Dir before Lease.Do and after it, exactly as for a one-shot
// action. Options.Prepare puts the tool files into a new worker's workspace.
//
// # Use
//
//	lease, err := pool.Acquire(ctx, &spec)
//	if err != nil { /* run the action one-shot */ }
//	defer lease.Release()
//	// stage inputs into lease.Dir(), build req (SandboxDir is filled in)
//	resp, err := lease.Do(ctx, req)
//	if errors.Is(err, workerpool.ErrWorkerFailed) { /* run it again one-shot */ }
//
// # Decisions
//
// No queueing behind a busy key. When every worker of a key is busy and the
// key is at Options.MaxWorkersPerKey, Acquire returns ErrNoCapacity at once
// instead of waiting. Running the action one-shot is always correct
// (Command.arguments is the full command line), it starts now rather than
// after an unknown wait, and the executor's own max_inflight_tasks already
// bounds concurrency. A warm worker saves start-up time; it is never worth an
// unbounded wait. The same holds when starting a worker would exceed
// MaxTotalMemoryBytes even after evicting idle workers. The one wait is for
// a worker whose lease is being released (Lease.Releasing: its request is
// answered and the caller is cleaning its workspace): that takes
// milliseconds, so Acquire waits for it, up to Options.ReleaseWait, rather
// than start another process or answer ErrNoCapacity.
//
// Multiplex. A multiplex worker (Spec.Multiplex) carries several requests at
// once, each with its own non-zero request_id, but only when it also supports
// sandboxing (Spec.Sandboxing): then each request gets a fresh directory
// inside the workspace, named in WorkRequest.sandbox_dir, and concurrent
// actions never see each other's files. A multiplex worker without sandboxing
// resolves every request against its one working directory, which the caller
// restages for each action, so it is given one request at a time (still with
// a non-zero request_id, as it expects). Up to Options.MaxMultiplexRequests
// requests share one sandboxing process; more processes start only when all
// are full.
//
// Failure. A worker that exits, closes stdout, writes anything that is not a
// well-formed response, or answers with a request_id nobody is waiting for is
// killed with its whole process group and discarded; every request in flight
// on it fails with ErrWorkerFailed, and the caller runs those actions again
// one-shot. A non-zero WorkResponse.exit_code is the tool's verdict, not a
// failure: the worker goes back to the pool.
//
// Cancellation. When the ctx of Lease.Do ends, a worker that declared
// Spec.Cancellable gets WorkRequest{cancel: true} and Options.CancelGrace to
// answer; if it answers it stays in the pool. Otherwise (or if it does not
// support cancellation) the process group is killed, which also fails any
// other request multiplexed on it. Do then returns an error wrapping the
// ctx's error, never ErrWorkerFailed, so the caller does not retry.
//
// Memory. The resident memory of a worker is the sum of VmRSS over its
// process and all its descendants (found through /proc). It is sampled after
// each request and by the sweeper; a worker over its limit is recycled. When
// starting a worker would push the total over MaxTotalMemoryBytes (the new
// worker is estimated at the largest size seen for its key), idle workers are
// stopped, other keys' first and least recently used first.
//
// Prewarm. For a key that has been acquired, the pool keeps up to
// Options.Prewarm idle workers started: it tops the key up after an
// acquisition takes an idle worker and after a worker is recycled, but not
// after the idle timeout stops one (an idle key should release its memory),
// nor after a process that never served a request fails (a tool that cannot
// start would otherwise be restarted forever).
// Prewarm calls Prepare without any action in flight, which is why the
// Spec (with its Tools) is kept per key and handed back to Prepare.
//
// Sandbox. With SandboxBwrap each worker runs under bubblewrap: the host file
// system read-only, the pool directory hidden except for the worker's own
// writable workspace, a private /tmp, /dev and /proc, no network, and its own
// PID namespace. The PID namespace does not hurt accounting or killing (the
// executor sees host PIDs in /proc and signals the bwrap process group), and
// it guarantees that killing bwrap kills every process inside, even one that
// left the process group. New checks that bwrap works and fails otherwise.
//
// Linux only: process groups, Pdeathsig, waitid(WNOWAIT) and /proc.
package workerpool
