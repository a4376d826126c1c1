package auth

import (
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/protobuf/proto"
)

// instanceOf extracts the instance name a request addresses. ok is false
// when the request does not say (a malformed resource name, an unknown
// operation): then the right is needed on some instance, and the handler
// rejects the request itself.
type instanceOf func(p *Policy, req proto.Message) (instance string, ok bool)

// rule is what one RPC needs.
type rule struct {
	right Right
	// public: no credential needed (health checks).
	public bool
	// instance is nil for the worker API, whose right is checked on the
	// empty instance (Policy.New allows the executor right only there).
	instance instanceOf
	// first is the request type of a streaming RPC whose first message
	// names the instance: the stream interceptor reads it before the
	// handler starts. Nil for unary RPCs and for streams checked at start.
	first func() proto.Message
}

const (
	cas  = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
	ac   = "/build.bazel.remote.execution.v2.ActionCache/"
	ex   = "/build.bazel.remote.execution.v2.Execution/"
	bs   = "/google.bytestream.ByteStream/"
	ops  = "/google.longrunning.Operations/"
	bots = "/google.devtools.remoteworkers.v1test2.Bots/"
)

// WorkerAPIMethod is the worker API's session stream (internal/workerapi).
const WorkerAPIMethod = "/hearth.workerapi.v1.Scheduler/Connect"

// rules maps every gRPC method Hearth serves to its right. A method missing
// here is refused whenever a policy is in force.
var rules = map[string]rule{
	"/build.bazel.remote.execution.v2.Capabilities/GetCapabilities": {right: Read, instance: field},

	cas + "FindMissingBlobs":     {right: Read, instance: field},
	cas + "BatchReadBlobs":       {right: Read, instance: field},
	cas + "GetTree":              {right: Read, instance: field, first: func() proto.Message { return &repb.GetTreeRequest{} }},
	cas + "SplitBlob":            {right: Read, instance: field},
	cas + "GetChunkMapping":      {right: Read, instance: field},
	cas + "BatchUpdateBlobs":     {right: Write, instance: field},
	cas + "SpliceBlob":           {right: Write, instance: field},
	cas + "RegisterChunkMapping": {right: Write, instance: field},

	ac + "GetActionResult":    {right: Read, instance: field},
	ac + "UpdateActionResult": {right: ACWrite, instance: field},

	ex + "Execute":       {right: Execute, instance: field, first: func() proto.Message { return &repb.ExecuteRequest{} }},
	ex + "WaitExecution": {right: Execute, instance: operation, first: func() proto.Message { return &repb.WaitExecutionRequest{} }},

	ops + "GetOperation":    {right: Execute, instance: operation},
	ops + "CancelOperation": {right: Execute, instance: operation},
	ops + "DeleteOperation": {right: Execute, instance: operation},
	ops + "WaitOperation":   {right: Execute, instance: operation},
	ops + "ListOperations":  {right: Execute, instance: operation},

	bs + "Read":             {right: Read, instance: resource, first: func() proto.Message { return &bspb.ReadRequest{} }},
	bs + "Write":            {right: Write, instance: resource, first: func() proto.Message { return &bspb.WriteRequest{} }},
	bs + "QueryWriteStatus": {right: Write, instance: resource},

	WorkerAPIMethod: {right: Executor},
	// The Remote Workers API (internal/rwapi): bots run other people's
	// actions, like executors.
	bots + "CreateBotSession": {right: Executor},
	bots + "UpdateBotSession": {right: Executor},

	"/grpc.health.v1.Health/Check": {public: true},
	"/grpc.health.v1.Health/Watch": {public: true},
	"/grpc.health.v1.Health/List":  {public: true},
}

func field(_ *Policy, req proto.Message) (string, bool) {
	r, ok := req.(interface{ GetInstanceName() string })
	if !ok {
		return "", false
	}
	return r.GetInstanceName(), true
}

func operation(p *Policy, req proto.Message) (string, bool) {
	r, ok := req.(interface{ GetName() string })
	if !ok || p.opInstance == nil {
		return "", false
	}
	return p.opInstance(r.GetName())
}

// resource takes the instance from a ByteStream resource name: the segments
// before the first "blobs", "compressed-blobs" or "uploads" (REAPI forbids
// those words as instance segments, so the first one ends the instance).
func resource(_ *Policy, req proto.Message) (string, bool) {
	r, ok := req.(interface{ GetResourceName() string })
	if !ok {
		return "", false
	}
	segs := strings.Split(r.GetResourceName(), "/")
	for i, s := range segs {
		switch s {
		case "blobs", "compressed-blobs", "uploads":
			return strings.Join(segs[:i], "/"), true
		}
	}
	return "", false
}
