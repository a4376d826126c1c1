// Package config owns the executor ("worker") configuration file of Hearth:
// JSON5 parsing, validation with errors that name the offending field path,
// and defaults derived from the machine. It never runs a process: the
// executor's assembly (executor.FromConfig) runs query_cmd and the
// precondition script.
//
// The file has the shape and field names of NativeLink's local worker
// configuration (nativelink-config `LocalWorkerConfig`) so that a NativeLink
// user's worker config translates line for line:
//
//	{ workers: [ { local: { worker_api_endpoint: { uri: "grpc://host:50061" }, ... } } ] }
//
// NativeLink fields that only make sense with NativeLink's store graph
// (cas_fast_slow_store, upload_action_result.ac_store, the top-level stores,
// schedulers, servers and global sections) are accepted and ignored with a
// warning: a Hearth worker always uses the CAS and action cache of the server
// behind worker_api_endpoint. Everything else unknown is an error.
//
// Hearth's own additions are persistent_workers and runner_command.
// The README's configuration reference documents every field.
package config

import (
	"errors"
	"strconv"
	"time"
)

// ErrInvalid is wrapped by every error that reports a bad configuration, so
// callers can tell "the file is wrong" from "the file could not be read".
var ErrInvalid = errors.New("invalid configuration")

// FieldError reports one bad field. Path is the field's location in the
// file, such as "workers[0].local.max_inflight_tasks".
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// File is a parsed worker configuration file.
type File struct {
	Workers []Worker
	// Warnings lists settings that were accepted for NativeLink compatibility
	// but have no effect in Hearth, each prefixed with its field path. The
	// caller should log them.
	Warnings []string
}

// Worker is one entry of the workers list. NativeLink encodes the worker
// kind as the single key of the entry; "local" is the only kind.
type Worker struct {
	Local LocalWorker
}

// LocalWorker is an executor that runs actions on this machine.
type LocalWorker struct {
	// Name prefixes the worker id in logs and metrics. Default: host name.
	Name string
	// WorkerAPIEndpoint is the scheduler's worker API (and CAS/AC) server.
	WorkerAPIEndpoint Endpoint
	// WorkDirectory holds the actions' directories. It is purged at start.
	WorkDirectory string
	// LocalCASSocket, if set, is the Unix socket on which the executor serves
	// buildbox's LocalCAS protocol (internal/localcas) for buildbox runners.
	LocalCASSocket string
	// PlatformProperties are advertised to the scheduler for matching.
	PlatformProperties map[string]PlatformProperty
	// MaxActionTimeout caps, and is the default of, an action's timeout;
	// a request for a longer timeout is rejected. Default 20 minutes.
	MaxActionTimeout time.Duration
	// MaxUploadTimeout bounds uploading one action's outputs. Default 10 min.
	MaxUploadTimeout time.Duration
	// MaxInflightTasks is how many actions run at once. Default: CPU count.
	MaxInflightTasks int
	// TimeoutHandledExternally: kill only at MaxActionTimeout, leaving the
	// action's own timeout to Entrypoint (see EnvTimeoutMillis).
	TimeoutHandledExternally bool
	// Entrypoint, when set, is prepended to every action's arguments.
	Entrypoint []string
	// PreconditionScript (experimental_precondition_script), when set, runs
	// before each action is taken; a non-zero exit pauses the worker.
	PreconditionScript []string
	// AdditionalEnvironment adds variables to every action's environment.
	AdditionalEnvironment map[string]EnvironmentSource
	// UploadActionResult says which results go to the action cache.
	UploadActionResult UploadActionResult
	// DirectoryCache caches staged input directories; nil disables it.
	DirectoryCache *DirectoryCache
	// PersistentWorkers configures the warm worker pools (Hearth only).
	PersistentWorkers PersistentWorkers
	// Sandbox confines one-shot actions (Hearth only; persistent workers
	// have their own persistent_workers.sandbox).
	Sandbox SandboxKind
	// RunnerCommand, when set, runs each action through a buildbox-style
	// runner program (such as ["hearth", "run"]) instead of in-process.
	// Hearth only; see the README for the contract.
	RunnerCommand []string
}

// Endpoint is a gRPC server address with its connection settings.
type Endpoint struct {
	// URI is grpc://host:port, grpcs://host:port (TLS), http://, https://
	// or unix:///path. With URIs it is the first of them.
	URI string
	// URIs (Hearth only: uris, instead of uri) are several servers sharing
	// state (`hearth server` replicas on one Redis): the worker uses the
	// first that accepts and moves to the next when its connection fails.
	// Nil when the config gives one uri.
	URIs []string
	// Timeout bounds one request. Default 5 seconds.
	Timeout time.Duration
	// TLS is set when the URI's scheme is grpcs or https and tls_config
	// was given; nil with a TLS scheme means "system roots".
	TLS *ClientTLS
	// TokenFile (Hearth only: token_file) holds a bearer token sent as
	// "authorization: Bearer <token>" with every call; the server's
	// executor principal's token when the server has auth configured.
	TokenFile string
}

// ClientTLS is NativeLink's ClientTlsConfig.
type ClientTLS struct {
	CAFile         string
	CertFile       string
	KeyFile        string
	UseNativeRoots bool
}

// PlatformProperty is one advertised property: a static list of values or a
// command whose output lines are the values. Exactly one is set.
type PlatformProperty struct {
	Values []string
	// QueryCmd is the argv of query_cmd, split with shell quoting rules but
	// run without a shell.
	QueryCmd []string
}

// EnvSourceKind says where an additional_environment variable's value comes
// from.
type EnvSourceKind int

// The additional_environment sources, named as in NativeLink.
const (
	// EnvValue: a fixed value (EnvironmentSource.Value).
	EnvValue EnvSourceKind = iota + 1
	// EnvProperty: the value of the action's platform property
	// EnvironmentSource.Property.
	EnvProperty
	// EnvFromEnvironment: the worker process's own variable
	// EnvironmentSource.Variable.
	EnvFromEnvironment
	// EnvTimeoutMillis: the action's effective timeout in milliseconds.
	EnvTimeoutMillis
	// EnvSideChannelFile: path of a file the action may write JSON to, e.g.
	// {"failure": "timeout"}, read after it exits.
	EnvSideChannelFile
	// EnvActionDirectory: the action's private directory, removed afterwards.
	EnvActionDirectory
)

var envSourceNames = map[EnvSourceKind]string{
	EnvValue:           "value",
	EnvProperty:        "property",
	EnvFromEnvironment: "from_environment",
	EnvTimeoutMillis:   "timeout_millis",
	EnvSideChannelFile: "side_channel_file",
	EnvActionDirectory: "action_directory",
}

func (k EnvSourceKind) String() string {
	if s, ok := envSourceNames[k]; ok {
		return s
	}
	return "EnvSourceKind(" + strconv.Itoa(int(k)) + ")"
}

// EnvironmentSource is one additional_environment entry.
type EnvironmentSource struct {
	Kind EnvSourceKind
	// Value is the fixed value for EnvValue.
	Value string
	// Property is the platform property name for EnvProperty.
	Property string
	// Variable is the worker environment variable read for
	// EnvFromEnvironment (the entry's own name unless given explicitly).
	Variable string
}

// UploadStrategy says which action results are written to the action cache.
type UploadStrategy int

// The upload_ac_results_strategy values. The zero value is the default.
const (
	UploadSuccessOnly UploadStrategy = iota
	UploadNever
	UploadEverything
	UploadFailuresOnly
)

var uploadStrategyNames = []string{"success_only", "never", "everything", "failures_only"}

func (s UploadStrategy) String() string {
	if s >= 0 && int(s) < len(uploadStrategyNames) {
		return uploadStrategyNames[s]
	}
	return "UploadStrategy(" + strconv.Itoa(int(s)) + ")"
}

// Uploads reports whether a completed action whose exit code was zero
// (succeeded) or not should be written to the action cache.
func (s UploadStrategy) Uploads(succeeded bool) bool {
	switch s {
	case UploadSuccessOnly:
		return succeeded
	case UploadEverything:
		return true
	case UploadFailuresOnly:
		return !succeeded
	default:
		return false
	}
}

// UploadActionResult is NativeLink's upload_action_result section.
type UploadActionResult struct {
	UploadACResultsStrategy UploadStrategy
	// SuccessMessageTemplate and FailureMessageTemplate fill
	// ExecuteResponse.message; empty templates give no message.
	SuccessMessageTemplate MessageTemplate
	FailureMessageTemplate MessageTemplate
}

// DirectoryCache caches whole staged input directories for reuse by
// hardlinking.
type DirectoryCache struct {
	// MaxEntries bounds the number of cached directories. Default 1000.
	MaxEntries int
	// MaxSizeBytes bounds their total size; 0 is unlimited. Default 10 GiB.
	MaxSizeBytes uint64
	// CacheRoot holds the cache. Default: a "directory_cache" directory
	// beside WorkDirectory.
	CacheRoot string
}

// WorkerProtocol is a Bazel persistent worker wire protocol.
type WorkerProtocol int

// The protocols, named as in Bazel's requires-worker-protocol.
const (
	ProtocolProto WorkerProtocol = iota
	ProtocolJSON
)

var protocolNames = []string{"proto", "json"}

func (p WorkerProtocol) String() string {
	if p >= 0 && int(p) < len(protocolNames) {
		return protocolNames[p]
	}
	return "WorkerProtocol(" + strconv.Itoa(int(p)) + ")"
}

// SandboxKind is how a persistent worker process is isolated.
type SandboxKind int

// The sandbox values.
const (
	// SandboxNone runs the worker directly in its workspace.
	SandboxNone SandboxKind = iota
	// SandboxBwrap runs it under bubblewrap, seeing only its workspace and
	// the system's read-only directories.
	SandboxBwrap
)

var sandboxNames = []string{"none", "bwrap"}

func (s SandboxKind) String() string {
	if s >= 0 && int(s) < len(sandboxNames) {
		return sandboxNames[s]
	}
	return "SandboxKind(" + strconv.Itoa(int(s)) + ")"
}

// PersistentWorkers configures the pools of warm worker processes. The
// zero values of the machine-derived fields mean "derive in ApplyDefaults".
type PersistentWorkers struct {
	// Enabled turns persistent workers on; when off every action runs
	// one-shot. Default true.
	Enabled bool
	// MaxWorkersPerPool bounds the processes of one pool key.
	MaxWorkersPerPool int
	// IdleTimeout stops a worker idle this long; 0 never does. Default 15m.
	IdleTimeout time.Duration
	// MaxInvocations recycles a worker after this many requests; 0 never.
	MaxInvocations int
	// MemoryLimitBytes recycles a worker whose resident memory exceeds it.
	MemoryLimitBytes uint64
	// MaxTotalMemoryBytes bounds the resident memory of all workers; idle
	// workers are stopped to stay under it, else actions run one-shot.
	MaxTotalMemoryBytes uint64
	// Protocols lists the wire protocols this executor speaks.
	Protocols []WorkerProtocol
	// Sandbox isolates worker processes.
	Sandbox SandboxKind
	// VerifyFraction of persistent-worker actions is also run one-shot and
	// the outputs compared, to catch workers that leak state. 0 is off.
	VerifyFraction float64
	// Prewarm is how many idle workers a pool keeps started for a key it
	// has served before.
	Prewarm int
}

// Supports reports whether p is among the enabled protocols.
func (pw *PersistentWorkers) Supports(p WorkerProtocol) bool {
	for _, q := range pw.Protocols {
		if q == p {
			return true
		}
	}
	return false
}

// StaticEnvironment returns the additional_environment entries whose values
// are known without an action (value and from_environment), resolved now.
// NativeLink gives exactly this environment, and no other, to query_cmd and
// the precondition script; Hearth does the same.
func (w *LocalWorker) StaticEnvironment(lookupEnv func(string) (string, bool)) map[string]string {
	env := make(map[string]string)
	for name, src := range w.AdditionalEnvironment {
		switch src.Kind {
		case EnvValue:
			env[name] = src.Value
		case EnvFromEnvironment:
			v, _ := lookupEnv(src.Variable)
			env[name] = v
		}
	}
	return env
}
