package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/code"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/errcode"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/metadatapb"
)

type runFlags struct {
	action, actionResult   string
	remote, instance       string
	disableLocalCAS        bool
	workspacePath          string
	stdoutFile, stderrFile string
	collectStats           bool
	digestFunction         string
	tokenFile              string
	tlsCA, tlsCert, tlsKey string

	// buildbox's runner command line (buildbox-worker passes these; see
	// runbuildbox.go and runconn.go).
	cas, ra             connFlags
	validateParameters  bool
	partialMetadataFile string
	logLevel            string
	verbose             bool
	logDirectory        string
}

// runRun is `hearth run`: buildbox-run's contract. It executes one serialized
// Action and writes the serialized ActionResult; an infrastructure failure
// is written as a google.rpc.Status to <action-result>.error-status and the
// exit code is non-zero.
func runRun(args []string) error {
	fs, f := newRunFlags()
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if f.action == "" || f.actionResult == "" {
		return errors.New("--action and --action-result are required")
	}
	setup, err := f.check()
	if f.validateParameters {
		if err != nil {
			return fmt.Errorf("--validate-parameters: %w", err)
		}
		fmt.Fprintln(os.Stderr, "hearth run: the parameters are valid (--validate-parameters); exiting 0 without running anything")
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var (
		result *repb.ActionResult
		st     *spb.Status
	)
	if err != nil {
		st = &spb.Status{Code: int32(code.Code_INVALID_ARGUMENT), Message: err.Error()}
	} else {
		closeLog, err := setup.openLog(f.logDirectory)
		if err != nil {
			return err
		}
		defer closeLog()
		result, st = runAction(ctx, f, setup)
	}
	if f.partialMetadataFile != "" {
		if err := writeProto(f.partialMetadataFile, partialMetadata(result)); err != nil {
			return fmt.Errorf("--partial-execution-metadata-file: %w", err)
		}
	}
	if result != nil {
		if err := writeProto(f.actionResult, result); err != nil {
			return err
		}
	}
	if st.GetCode() != int32(code.Code_OK) {
		if err := writeProto(f.actionResult+".error-status", st); err != nil {
			return err
		}
		return fmt.Errorf("%s: %s", code.Code(st.GetCode()), st.GetMessage())
	}
	return nil
}

// newRunFlags is `hearth run`'s flag set, writing into the returned flags.
func newRunFlags() (*flag.FlagSet, *runFlags) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	f := &runFlags{}
	fs.StringVar(&f.action, "action", "", "file holding a serialized build.bazel.remote.execution.v2.Action (required)")
	fs.StringVar(&f.actionResult, "action-result", "", "file to write the serialized ActionResult to (required)")
	fs.StringVar(&f.remote, "remote", "", "CAS server, grpc://HOST:PORT; unix:PATH is a LocalCAS server (a hearth worker's --localcas-socket, or buildbox-casd) that stages inputs and captures outputs, unless --disable-localcas")
	fs.StringVar(&f.instance, "instance", "", "REAPI instance name")
	fs.BoolVar(&f.disableLocalCAS, "disable-localcas", false, "treat --remote as a plain REAPI CAS even if it is a unix: socket, and stage and capture in-process")
	fs.StringVar(&f.workspacePath, "workspace-path", "", "directory in which the action's directory is created (default: a temporary directory)")
	fs.StringVar(&f.stdoutFile, "stdout-file", "", "also write the action's stdout to this file")
	fs.StringVar(&f.stderrFile, "stderr-file", "", "also write the action's stderr to this file")
	fs.BoolVar(&f.collectStats, "collect-execution-stats", false, "upload rusage figures and reference them from auxiliary_metadata")
	fs.StringVar(&f.digestFunction, "digest-function", "sha256", "digest function of the action: sha256 or blake3, in any case (buildbox-worker says SHA256)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding a bearer token sent to --remote with every call")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "PEM CA(s) to verify a grpcs:// --remote with (default: the system roots)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM client certificate for a grpcs:// --remote that requires mTLS")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	f.registerBuildbox(fs)
	return fs, f
}

func runAction(ctx context.Context, f *runFlags, setup runSetup) (*repb.ActionResult, *spb.Status) {
	fail := func(c code.Code, format string, args ...any) (*repb.ActionResult, *spb.Status) {
		return nil, &spb.Status{Code: int32(c), Message: fmt.Sprintf(format, args...)}
	}
	fn := setup.fn
	data, err := os.ReadFile(f.action)
	if err != nil {
		return fail(code.Code_INVALID_ARGUMENT, "reading --action: %v", err)
	}
	action := &repb.Action{}
	if err := proto.Unmarshal(data, action); err != nil {
		return fail(code.Code_INVALID_ARGUMENT, "--action %s is not a serialized Action: %v", f.action, err)
	}
	if sock, ok := localCASSocket(f.remote); ok && !f.disableLocalCAS {
		return runLocalCAS(ctx, f, setup, sock, action)
	}
	remote := f.remote
	if sock, ok := localCASSocket(remote); ok {
		remote = "unix://" + sock
	}
	conn, err := casclient.DialWith(ctx, remote, setup.dial)
	if err != nil {
		return fail(code.Code_INVALID_ARGUMENT, "--remote: %v", err)
	}
	defer conn.Close()
	store := casclient.NewStore(conn, f.instance, casclient.WithRetry(setup.retry))

	workspace := f.workspacePath
	if workspace == "" {
		if workspace, err = os.MkdirTemp("", "hearth-run-"); err != nil {
			return fail(code.Code_INTERNAL, "%v", err)
		}
		defer os.RemoveAll(workspace)
	}
	scratch, err := os.MkdirTemp(workspace, ".hearth-files-")
	if err != nil {
		return fail(code.Code_INTERNAL, "%v", err)
	}
	defer os.RemoveAll(scratch)
	files, err := filecache.New(scratch, store, filecache.Options{})
	if err != nil {
		return fail(code.Code_INTERNAL, "%v", err)
	}
	b := &builder.Builder{CAS: store, Files: files, WorkDir: workspace, WorkerName: hostname() + "/hearth-run", Logger: setup.logger}
	resp := b.Build(ctx, builder.Task{Instance: f.instance, ActionDigest: digest.Compute(fn, data), Action: action})
	if err := b.Close(); err != nil {
		return fail(code.Code_INTERNAL, "clean the workspace %s: %v", workspace, err)
	}
	result := resp.GetResult()
	if md := result.GetExecutionMetadata(); md != nil {
		// A runner has no queue (the builder would say year 1): the
		// server that queued the action, or the executor that spawned
		// this runner, knows when.
		md.QueuedTimestamp = nil
	}
	if err := finishStats(ctx, store, fn, result, f.collectStats); err != nil {
		return result, errcode.Proto(err)
	}
	for _, out := range []struct {
		path string
		d    *repb.Digest
	}{{f.stdoutFile, result.GetStdoutDigest()}, {f.stderrFile, result.GetStderrDigest()}} {
		if out.path == "" || out.d == nil {
			continue
		}
		if err := copyBlob(ctx, store, fn, out.d, out.path); err != nil {
			return result, errcode.Proto(err)
		}
	}
	return result, resp.GetStatus()
}

// finishStats keeps the rusage figures the builder always gathers only when
// asked, and then as buildbox does: the statistics message is uploaded and
// auxiliary_metadata carries its digest.
func finishStats(ctx context.Context, store cas.Store, fn digest.Function, result *repb.ActionResult, collect bool) error {
	md := result.GetExecutionMetadata()
	if md == nil {
		return nil
	}
	var kept []*anypb.Any
	for _, a := range md.GetAuxiliaryMetadata() {
		if !a.MessageIs(&metadatapb.ExecutionStatistics{}) {
			kept = append(kept, a)
			continue
		}
		if !collect {
			continue
		}
		d := digest.Compute(fn, a.GetValue())
		if err := cas.Put(ctx, store, d, a.GetValue()); err != nil {
			return fmt.Errorf("uploading execution statistics: %w", err)
		}
		ref, err := anypb.New(d.Proto())
		if err != nil {
			return err
		}
		kept = append(kept, ref)
	}
	md.AuxiliaryMetadata = kept
	return nil
}

func copyBlob(ctx context.Context, store cas.Store, fn digest.Function, pd *repb.Digest, path string) error {
	d, err := digest.FromProto(fn, pd)
	if err != nil {
		return err
	}
	r, err := store.Open(ctx, d, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.ReadFrom(r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeProto writes m to path atomically.
func writeProto(path string, m proto.Message) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, data)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
