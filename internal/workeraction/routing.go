package workeraction

import (
	"crypto/sha256"
	"encoding/hex"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// RoutingKey is the key under which executors report idle warm workers and
// the scheduler routes actions to them. It must be computable from what the
// scheduler holds (the platform and the Command, not the input tree), so it
// is coarser than the pool key: it leaves out the tool digests (and the
// instance name), and a mis-route only costs a cold start.
//
// With persistentWorkerKey it is the client's key itself (what executors
// reported before counts existed). An opt-in without one (supports-workers=1
// through exec_properties) is routed by a hash of what the pool key is made
// of apart from the tools: startup arguments, environment and protocol
// options. "" means the action is not a worker action.
func RoutingKey(k KeyInput) string {
	if k.ClientKey != "" {
		return k.ClientKey
	}
	k.Instance, k.Tools = "", nil
	sum := sha256.Sum256([]byte(PoolKey(k)))
	return "derived:" + hex.EncodeToString(sum[:16])
}

// RoutingKeyOf computes RoutingKey for an action the way the executor's
// planning does, or returns "" when the action would not go to a worker.
func RoutingKeyOf(props []*repb.Platform_Property, cmd *repb.Command) string {
	hints, err := ParseHints(props)
	if err != nil || !hints.OptIn {
		return ""
	}
	if hints.ClientKey != "" {
		return hints.ClientKey
	}
	if cmd.GetWorkingDirectory() != "" {
		return ""
	}
	startup, request := SplitArgs(cmd.GetArguments())
	if len(startup) == 0 || len(request) == 0 {
		return ""
	}
	env := make([]string, 0, len(cmd.GetEnvironmentVariables()))
	for _, v := range cmd.GetEnvironmentVariables() {
		env = append(env, v.GetName()+"="+v.GetValue())
	}
	return RoutingKey(KeyInput{
		Startup: startup, Env: env, Protocol: hints.Protocol,
		Multiplex: hints.Multiplex, Sandboxing: hints.Sandboxing, Cancellable: hints.Cancellable,
	})
}
