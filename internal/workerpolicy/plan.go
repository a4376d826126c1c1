package workerpolicy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"github.com/hearth-build/hearth/internal/platform"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/metadatapb"
	"github.com/hearth-build/hearth/internal/workeraction"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
)

// Action is what planning needs to know of one action.
type Action struct {
	Instance string
	Action   *repb.Action
	Command  *repb.Command
	Tree     *inputtree.Tree
	// Env is the complete environment the action would run with (the
	// Command's, with the executor's additional_environment): the worker
	// process gets it, and it is part of the pool key.
	Env []string
	// Entrypoint, when set, wraps the worker's startup command as it wraps
	// a one-shot command line (the executor's entrypoint); it is part of
	// the pool key.
	Entrypoint []string
}

// Plan is how one action will be sent to a persistent worker.
type Plan struct {
	Spec *workerpool.Spec
	// Request are the flag-file arguments, before expansion.
	Request []string
	// Info goes in the action's auxiliary metadata.
	Info  *metadatapb.PersistentWorkerInfo
	tools map[string]bool
}

// IsTool reports whether path (relative to the input root) is a tool file,
// which stays in a worker's workspace between requests.
func (p *Plan) IsTool(path string) bool { return p.tools[path] }

// Plan decides whether a goes to a persistent worker; nil means one-shot.
// The worker properties are hints: whenever something does not fit (no
// opt-in, no flag file, a protocol this executor does not speak, a working
// directory), the action simply runs one-shot. A quarantined key returns a
// plan already marked as fallen back, so the reason reaches the client.
func (w *Workers) Plan(a Action) *Plan {
	cmd := a.Command
	if cmd.GetWorkingDirectory() != "" {
		return nil
	}
	props := platform.Properties(a.Action, cmd)
	hints, err := workeraction.ParseHints(props)
	if err != nil || !hints.OptIn {
		return nil
	}
	startup, request := workeraction.SplitArgs(cmd.GetArguments())
	if len(request) == 0 || len(startup) == 0 {
		return nil
	}
	protocol, err := workerproto.ParseProtocol(hints.Protocol)
	if err != nil || !w.supports(protocol) {
		return nil
	}
	// The tools are named by the tool's own startup arguments; the
	// entrypoint is the executor's, the same for every key.
	argv := append(append([]string(nil), a.Entrypoint...), startup...)
	in := workeraction.KeyInput{
		Instance: a.Instance, ClientKey: hints.ClientKey, Startup: argv, Env: a.Env, Protocol: hints.Protocol,
		Multiplex: hints.Multiplex, Sandboxing: hints.Sandboxing, Cancellable: hints.Cancellable,
	}
	ts := w.toolSetFor(in, a.Tree, startup)
	plan := &Plan{
		Spec: &workerpool.Spec{
			Key: ts.key, Family: family(a.Instance, hints.ClientKey, argv),
			Argv: argv, Env: a.Env, Protocol: protocol,
			Multiplex: hints.Multiplex, Sandboxing: hints.Sandboxing, Cancellable: hints.Cancellable,
			Tools: ts.spec,
		},
		Request: request,
		Info:    &metadatapb.PersistentWorkerInfo{PoolKey: ts.key, ClientKey: hints.ClientKey},
		tools:   ts.paths,
	}
	key := ts.key
	w.mu.Lock()
	r := w.record(key)
	r.clientKey = hints.ClientKey
	// From what the client sent, not argv/env: the scheduler never sees the
	// entrypoint or the additional environment.
	r.routingKey = workeraction.RoutingKeyOf(props, cmd)
	quarantined := r.quarantined
	w.mu.Unlock()
	if quarantined != "" {
		w.FallBack(plan, "quarantined", nil)
		plan.Info.FallbackReason = "quarantined: " + quarantined
	}
	return plan
}

// family names what stays the same when a tool changes, so the pool can stop
// workers of the outdated tool early.
func family(instance, clientKey string, startup []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q", instance, clientKey, startup)
	return hex.EncodeToString(h.Sum(nil))[:16]
}
