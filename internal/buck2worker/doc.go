// Package buck2worker owns the bridge from Buck2's local persistent worker
// protocol to Bazel-protocol persistent workers: `hearth buck2-worker`.
//
// Buck2 starts a local worker (WorkerInfo.exe) in the project root with
// $WORKER_SOCKET naming a Unix socket, waits for the socket, and sends each
// action's positional arguments and environment as an ExecuteCommand over
// gRPC (Buck2's worker.proto, in buck2workerpb): the unary Worker.Execute,
// the client-streaming Worker.Exec whose later ExecuteCancel event cancels
// the command, or WorkerStreaming.ExecuteStream when WorkerInfo.streaming is
// set. A cancelled RPC (Buck2 drops the request future when the action is
// cancelled) cancels the command too. The bridge serves all three with a
// workerpool.Pool of processes started from its own argv (the Bazel worker's
// startup command) plus --persistent_worker, in the bridge's working
// directory, so that the request's relative paths mean what Buck2 meant.
//
// # Decisions
//
// Arguments. ExecuteCommand.argv is exactly WorkerRunInfo's positional
// arguments (Buck2 does not send the executable), so it becomes
// WorkRequest.arguments, with @argfiles expanded as for Bazel workers
// (workeraction.ExpandArgs). WorkRequest.inputs is empty unless the bridge
// was told which directories a worker may read (Config.InputDirs): Buck2's
// local protocol names no inputs, and some Bazel workers (tsc_wrapped) read
// only files listed there.
//
// Environment. A Bazel worker gets its environment once, at start, while
// Buck2 sends one with every command. The bridge's own environment (which
// Buck2 built from WorkerInfo.env), less WORKER_SOCKET, overlaid with the
// request's entries, is the process's environment, and the request's
// entries are part of the pool key: a request whose environment differs gets
// a process of its own, as Bazel's WorkerKey includes the environment. The
// variables Buck2 changes for every action (its scratch TMPDIR, the build
// id; Config.VolatileEnv) are left out of both, or every request would start
// a process; one-shot runs do get them.
//
// Concurrency. At most Config.Concurrency commands run at once; more wait
// for a slot (Buck2 bounds its own sends by WorkerInfo.concurrency, so the
// two should match). A multiplex worker gets them all on one process, since
// Buck2's actions write distinct paths of one shared project root, exactly
// like Bazel's local multiplex workers; otherwise up to Concurrency
// processes run one request each. Unlike the executor's use of the pool, a
// request whose worker is starting or busy waits for it (bounded) instead of
// running one-shot: here a one-shot run costs a full start-up too.
//
// Crash of the underlying worker. The request is run again once, one-shot:
// the worker argv plus the request's arguments, without --persistent_worker,
// in the same directory with the request's full environment; that result
// goes to Buck2. Why not fail: Buck2's local worker protocol has no fallback
// of its own (WorkerRunInfo.exe is used only when workers are disabled), so a
// failure would fail the build for a fault of the worker process, not of the
// action; while Bazel's worker contract makes startup args plus request
// arguments a complete command, so the re-run is the answer the action
// deserves. If the tool itself crashes on this input, the one-shot run
// crashes too and Buck2 gets the tool's own exit code and stderr, which is
// the clearest message there is. The same fallback serves a worker that
// cannot start or an @argfile the bridge cannot read. A cancelled or timed-out
// request is never re-run.
package buck2worker
