package buck2worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	bpb "github.com/hearth-build/hearth/internal/buck2worker/buck2workerpb"
)

// NewServer returns a gRPC server with Buck2's Worker and WorkerStreaming
// services backed by b. Messages are unbounded in size, as on Buck2's side
// (a test runner's argv or a compiler's stderr can be large).
func NewServer(b *Bridge) *grpc.Server {
	s := grpc.NewServer(grpc.MaxRecvMsgSize(math.MaxInt32), grpc.MaxSendMsgSize(math.MaxInt32))
	bpb.RegisterWorkerServer(s, &workerService{b: b})
	bpb.RegisterWorkerStreamingServer(s, &streamingService{b: b})
	return s
}

// Listen creates the Unix socket Buck2 named. A socket file left at path by
// an earlier process is replaced; any other file is an error.
func Listen(path string) (net.Listener, error) {
	if path == "" {
		return nil, fmt.Errorf("buck2worker: $%s is not set: the bridge is started by Buck2 as a local worker", SocketEnv)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("buck2worker: %s exists and is not a socket", path)
		}
		_ = os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("buck2worker: %w", err)
	}
	return l, nil
}

// decode turns an ExecuteCommand into a Command.
func decode(c *bpb.ExecuteCommand) *Command {
	cmd := &Command{Args: make([]string, len(c.GetArgv()))}
	for i, a := range c.GetArgv() {
		cmd.Args[i] = string(a)
	}
	for _, e := range c.GetEnv() {
		if len(e.GetKey()) == 0 || bytes.IndexByte(e.GetKey(), '=') >= 0 {
			cmd.invalid = fmt.Errorf("%w: environment variable name %q is empty or contains '='", ErrInvalidCommand, e.GetKey())
		}
		cmd.Env = append(cmd.Env, string(e.GetKey())+"="+string(e.GetValue()))
	}
	if c.TimeoutS != nil && c.GetTimeoutS() > 0 {
		cmd.Timeout = time.Duration(min(c.GetTimeoutS(), uint64(math.MaxInt64/int64(time.Second)))) * time.Second
	}
	return cmd
}

// encode turns a Result into Buck2's response.
func encode(r *Result, cmd *Command) *bpb.ExecuteResponse {
	resp := &bpb.ExecuteResponse{ExitCode: r.ExitCode, Stderr: r.Stderr}
	if r.TimedOut {
		s := uint64(cmd.Timeout / time.Second)
		resp.TimedOutAfterS = &s
	}
	return resp
}

// toStatus maps a Run error to the gRPC status Buck2 sees. Buck2 retries
// UNAVAILABLE (a connection problem), so it is never used for a command's
// own failure.
func toStatus(err error) error {
	switch {
	case errors.Is(err, ErrInvalidCommand):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, errCancelEvent), errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

type workerService struct {
	bpb.UnimplementedWorkerServer
	b *Bridge
}

// Execute is the unary call Buck2 uses today; cancelling the RPC cancels the
// command.
func (s *workerService) Execute(ctx context.Context, c *bpb.ExecuteCommand) (*bpb.ExecuteResponse, error) {
	cmd := decode(c)
	res, err := s.b.Run(ctx, cmd)
	if err != nil {
		return nil, toStatus(err)
	}
	return encode(res, cmd), nil
}

// Exec takes the command as its first event; an ExecuteCancel event after it
// cancels the command, as does cancelling the RPC.
func (s *workerService) Exec(stream grpc.ClientStreamingServer[bpb.ExecuteEvent, bpb.ExecuteResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "buck2worker: no command event: %v", err)
	}
	c := first.GetCommand()
	if c == nil {
		return status.Error(codes.InvalidArgument, "buck2worker: the first event of Exec must be a command")
	}
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				return // io.EOF: the client sent everything; or the RPC ended
			}
			if ev.GetCancel() != nil {
				cancel(errCancelEvent)
				return
			}
		}
	}()
	cmd := decode(c)
	res, err := s.b.Run(ctx, cmd)
	if err != nil {
		return toStatus(err)
	}
	return stream.SendAndClose(encode(res, cmd))
}

type streamingService struct {
	bpb.UnimplementedWorkerStreamingServer
	b *Bridge
}

// ExecuteStream serves WorkerInfo(streaming = True): commands and responses
// matched by id on one stream. The protocol has no per-command error, so a
// command that cannot run is answered with exit code -1 and the reason as
// stderr. Ending the stream cancels what is still running.
func (s *streamingService) ExecuteStream(stream grpc.BidiStreamingServer[bpb.ExecuteCommandStream, bpb.ExecuteResponseStream]) error {
	ctx := stream.Context()
	var (
		wg      sync.WaitGroup
		sendMu  sync.Mutex
		sendErr error
	)
	defer wg.Wait()
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil // wg.Wait: answer everything in flight first
		}
		if err != nil {
			return err
		}
		wg.Go(func() {
			cmd := decode(msg.GetRequest())
			res, err := s.b.Run(ctx, cmd)
			resp := &bpb.ExecuteResponse{ExitCode: -1}
			if err != nil {
				resp.Stderr = "hearth buck2-worker: " + err.Error() + "\n"
			} else {
				resp = encode(res, cmd)
			}
			sendMu.Lock()
			defer sendMu.Unlock()
			if sendErr == nil {
				sendErr = stream.Send(&bpb.ExecuteResponseStream{Response: resp, Id: msg.GetId()})
			}
		})
	}
}
