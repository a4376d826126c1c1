package reapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/scheduler"
)

// execEnv is the Execution service over real disk stores and a real
// scheduler with no executor connected: a valid action is queued (and
// waits), so reaching QUEUED proves that validation let it through, and an
// invalid one must fail before any operation exists.
type execEnv struct {
	cfg   Config
	exec  repb.ExecutionClient
	sched *scheduler.Scheduler
}

func startExecution(t *testing.T) *execEnv {
	t.Helper()
	sched := scheduler.New(scheduler.Config{Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(sched.Close)
	conn, cfg := startServer(t, func(c *Config) { c.Scheduler = sched; c.ExecEnabled = true })
	return &execEnv{cfg: cfg, exec: repb.NewExecutionClient(conn), sched: sched}
}

// spec is an action to store: the Action and Command protos and the root.
type spec struct {
	action *repb.Action
	cmd    *repb.Command
	root   *repb.Directory
}

func validSpec() spec {
	return spec{
		action: &repb.Action{Timeout: durationpb.New(time.Minute)},
		cmd: &repb.Command{
			Arguments:            []string{"/bin/sh", "-c", "true"},
			EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "A", Value: "1"}, {Name: "B", Value: "2"}},
			OutputPaths:          []string{"a", "b/c"},
		},
		root: &repb.Directory{},
	}
}

// store puts the spec's blobs in the CAS and returns the Action's digest.
func (e *execEnv) store(t *testing.T, s spec) digest.Digest {
	t.Helper()
	a := proto.Clone(s.action).(*repb.Action)
	if a.CommandDigest == nil {
		a.CommandDigest = putProto(t, e.cfg.CAS, digest.SHA256, s.cmd).Proto()
	}
	if a.InputRootDigest == nil {
		a.InputRootDigest = putProto(t, e.cfg.CAS, digest.SHA256, s.root).Proto()
	}
	return putProto(t, e.cfg.CAS, digest.SHA256, a)
}

// execute runs Execute until the operation is queued (nil) or the call
// fails (its error); it returns the stages streamed.
func (e *execEnv) execute(t *testing.T, d digest.Digest) ([]repb.ExecutionStage_Value, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := e.exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: d.Proto(), SkipCacheLookup: true})
	if err != nil {
		return nil, err
	}
	var stages []repb.ExecutionStage_Value
	for {
		op, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stages, nil
		}
		if err != nil {
			return stages, err
		}
		md := &repb.ExecuteOperationMetadata{}
		if err := op.GetMetadata().UnmarshalTo(md); err != nil {
			t.Fatal(err)
		}
		stages = append(stages, md.GetStage())
		if md.GetStage() == repb.ExecutionStage_QUEUED || op.GetDone() {
			return stages, nil
		}
	}
}

func TestExecuteValidatesActionAndCommand(t *testing.T) {
	e := startExecution(t)
	unsortedRoot := &repb.Directory{Files: []*repb.FileNode{
		{Name: "b", Digest: digest.Compute(digest.SHA256, nil).Proto()},
		{Name: "a", Digest: digest.Compute(digest.SHA256, nil).Proto()},
	}}
	tests := []struct {
		name   string
		change func(s *spec)
		want   string // in the message
	}{
		// Action.timeout
		{"negative timeout", func(s *spec) { s.action.Timeout = &durationpb.Duration{Seconds: -1} }, "timeout -1s is negative"},
		{"negative nanoseconds timeout", func(s *spec) { s.action.Timeout = &durationpb.Duration{Nanos: -5} }, "is negative"},
		{"timeout with mixed signs", func(s *spec) { s.action.Timeout = &durationpb.Duration{Seconds: 1, Nanos: -1} }, "not a valid google.protobuf.Duration"},
		{"timeout nanos out of range", func(s *spec) { s.action.Timeout = &durationpb.Duration{Nanos: 1e9} }, "not a valid google.protobuf.Duration"},
		{"timeout seconds out of range", func(s *spec) { s.action.Timeout = &durationpb.Duration{Seconds: 315576000001} }, "not a valid google.protobuf.Duration"},
		// Action digests
		{"bad command digest", func(s *spec) { s.action.CommandDigest = &repb.Digest{Hash: "abc", SizeBytes: 1} }, "command_digest"},
		{"negative input root size", func(s *spec) {
			s.action.InputRootDigest = &repb.Digest{Hash: digest.Compute(digest.SHA256, nil).Hash, SizeBytes: -1}
		}, "input_root_digest"},
		{"oversized command", func(s *spec) {
			s.action.CommandDigest = &repb.Digest{Hash: digest.Compute(digest.SHA256, []byte("big")).Hash, SizeBytes: maxMessageBytes + 1}
		}, "more than the 67108864 bytes this server reads for one Command"},
		// Action.platform
		{"action platform unsorted names", func(s *spec) {
			s.action.Platform = platform("b", "1", "a", "1")
		}, `property a="1" comes after b="1"`},
		{"action platform unsorted values", func(s *spec) {
			s.action.Platform = platform("a", "2", "a", "1")
		}, "sorted by name, then value"},
		{"action platform duplicate", func(s *spec) { s.action.Platform = platform("a", "1", "a", "1") }, "listed twice"},
		{"action platform empty name", func(s *spec) { s.action.Platform = platform("", "1") }, "empty name"},
		// Command.arguments
		{"no arguments", func(s *spec) { s.cmd.Arguments = nil }, "nothing to run"},
		{"empty first argument", func(s *spec) { s.cmd.Arguments = []string{"", "x"} }, "nothing to run"},
		{"NUL in an argument", func(s *spec) { s.cmd.Arguments = []string{"/bin/echo", "a\x00b"} }, "arguments[1]"},
		// Command.environment_variables
		{"unsorted environment", func(s *spec) {
			s.cmd.EnvironmentVariables = []*repb.Command_EnvironmentVariable{{Name: "B"}, {Name: "A"}}
		}, `"A" comes after "B"`},
		{"duplicate environment variable", func(s *spec) {
			s.cmd.EnvironmentVariables = []*repb.Command_EnvironmentVariable{{Name: "A"}, {Name: "A"}}
		}, "set twice"},
		{"= in a variable name", func(s *spec) {
			s.cmd.EnvironmentVariables = []*repb.Command_EnvironmentVariable{{Name: "A=B"}}
		}, `"A=B"`},
		{"NUL in a value", func(s *spec) {
			s.cmd.EnvironmentVariables = []*repb.Command_EnvironmentVariable{{Name: "A", Value: "\x00"}}
		}, `"A"`},
		// Command outputs
		{"unsorted output_paths", func(s *spec) { s.cmd.OutputPaths = []string{"b", "a"} }, `output_paths: "a" comes after "b"`},
		{"unsorted output_files", func(s *spec) {
			s.cmd.OutputPaths = nil
			//lint:ignore SA1019 the legacy field is still validated
			s.cmd.OutputFiles = []string{"z", "y"}
		}, `output_files: "y" comes after "z"`},
		{"unsorted output_directories", func(s *spec) {
			s.cmd.OutputPaths = nil
			//lint:ignore SA1019 the legacy field is still validated
			s.cmd.OutputDirectories = []string{"z", "y"}
		}, `output_directories: "y" comes after "z"`},
		{"unsorted output_node_properties", func(s *spec) {
			s.cmd.OutputNodeProperties = []string{"unix_mode", "mtime"}
		}, "output_node_properties"},
		{"duplicate output_node_properties", func(s *spec) {
			s.cmd.OutputNodeProperties = []string{"mtime", "mtime"}
		}, `lists "mtime" twice`},
		{"output path above the root", func(s *spec) { s.cmd.OutputPaths = []string{"../x"} }, "../x"},
		// Command.platform (clients before v2.2)
		{"command platform unsorted", func(s *spec) {
			//lint:ignore SA1019 what pre-v2.2 clients send
			s.cmd.Platform = platform("os", "linux", "arch", "x86")
		}, "platform: property arch"},
		// Command.working_directory
		{"working directory absent", func(s *spec) { s.cmd.WorkingDirectory = "nope" }, `working_directory "nope" is not a directory`},
		{"working directory above the root", func(s *spec) { s.cmd.WorkingDirectory = ".." }, `".."`},
		// The input root
		{"unsorted input root", func(s *spec) { s.root = unsortedRoot }, "must be sorted"},
		{"unsorted node properties", func(s *spec) {
			s.root = &repb.Directory{NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: "z"}, {Name: "y"}}}}
		}, `node property "y" comes after "z"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.change(&s)
			stages, err := e.execute(t, e.store(t, s))
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("Execute: %v, want INVALID_ARGUMENT", err)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.want) {
				t.Errorf("message %q does not mention %q", msg, tt.want)
			}
			if len(stages) > 0 {
				t.Errorf("an operation was created and streamed stages %v before the error", stages)
			}
		})
	}

	// An Action digest naming a huge blob is refused before it is read.
	big := digest.Digest{Function: digest.SHA256, Hash: digest.Compute(digest.SHA256, []byte("huge")).Hash, Size: maxMessageBytes + 1}
	if _, err := e.execute(t, big); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "for one Action") {
		t.Errorf("Execute of a %d-byte Action: %v, want INVALID_ARGUMENT", big.Size, err)
	}

	// The controls: what REAPI allows is let through to the scheduler.
	for name, change := range map[string]func(s *spec){
		"valid":                  func(*spec) {},
		"no timeout":             func(s *spec) { s.action.Timeout = nil },
		"zero timeout":           func(s *spec) { s.action.Timeout = &durationpb.Duration{} },
		"repeated platform name": func(s *spec) { s.action.Platform = platform("a", "1", "a", "2", "b", "0") },
		"working directory": func(s *spec) {
			s.root = &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "wd", Digest: putProto(t, e.cfg.CAS, digest.SHA256, &repb.Directory{}).Proto()}}}
			s.cmd.WorkingDirectory = "wd"
		},
		"output node properties": func(s *spec) { s.cmd.OutputNodeProperties = []string{"mtime", "unix_mode"} },
		"node properties with a repeated name": func(s *spec) {
			s.root = &repb.Directory{NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: "k", Value: "2"}, {Name: "k", Value: "1"}}}}
		},
	} {
		t.Run("accepts "+name, func(t *testing.T) {
			s := validSpec()
			change(&s)
			stages, err := e.execute(t, e.store(t, s))
			if err != nil || len(stages) == 0 || stages[len(stages)-1] != repb.ExecutionStage_QUEUED {
				t.Fatalf("Execute: stages %v, %v; want the action queued", stages, err)
			}
		})
	}
}

// platform builds a Platform from name, value pairs, in the order given.
func platform(kv ...string) *repb.Platform {
	p := &repb.Platform{}
	for i := 0; i < len(kv); i += 2 {
		p.Properties = append(p.Properties, &repb.Platform_Property{Name: kv[i], Value: kv[i+1]})
	}
	return p
}

// TestExecuteReportsMissingBlobs: a missing Command, Directory and input file
// are reported together, and found again once they are uploaded.
func TestExecuteReportsMissingBlobs(t *testing.T) {
	e := startExecution(t)
	file := []byte("input file")
	sub := &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: digest.Compute(digest.SHA256, file).Proto()}}}
	subData, _ := proto.MarshalOptions{Deterministic: true}.Marshal(sub)
	subD := digest.Compute(digest.SHA256, subData)
	other := &repb.Directory{Files: []*repb.FileNode{{Name: "g", Digest: digest.Compute(digest.SHA256, []byte("other file")).Proto()}}}
	root := &repb.Directory{Directories: []*repb.DirectoryNode{
		{Name: "other", Digest: putProto(t, e.cfg.CAS, digest.SHA256, other).Proto()},
		{Name: "sub", Digest: subD.Proto()},
	}}
	cmd := validSpec().cmd
	cmdData, _ := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	cmdD := digest.Compute(digest.SHA256, cmdData)
	ad := e.store(t, spec{action: &repb.Action{CommandDigest: cmdD.Proto()}, root: root})
	_, err := e.execute(t, ad)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Execute: %v, want FAILED_PRECONDITION", err)
	}
	for _, d := range []digest.Digest{cmdD, subD, digest.Compute(digest.SHA256, []byte("other file"))} {
		if !strings.Contains(err.Error(), d.Hash) {
			t.Errorf("%v does not report %s missing", err, d)
		}
	}
	putBlobs(t, e.cfg.CAS, digest.SHA256, cmdData, subData, []byte("other file"))
	_, err = e.execute(t, ad)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), digest.Compute(digest.SHA256, file).Hash) || strings.Contains(err.Error(), cmdD.Hash) {
		t.Fatalf("Execute after uploading all but f: %v, want only f missing", err)
	}
	putBlobs(t, e.cfg.CAS, digest.SHA256, file)
	if stages, err := e.execute(t, ad); err != nil || stages[len(stages)-1] != repb.ExecutionStage_QUEUED {
		t.Fatalf("Execute with everything uploaded: %v, %v", stages, err)
	}
}
