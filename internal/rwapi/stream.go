package rwapi

import (
	"context"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/hearth-build/hearth/internal/workerapi"
)

// slotStream is the in-process side of one executor session of the
// scheduler: rwapi calls the scheduler's public Connect with it, so a bot
// slot registers, is assigned work and is re-queued exactly like a
// `hearth worker` executor, without a second scheduling path.
type slotStream struct {
	ctx context.Context
	in  chan *workerapi.ExecutorMessage // to the scheduler
	out func(*workerapi.SchedulerMessage)
}

var _ grpc.BidiStreamingServer[workerapi.ExecutorMessage, workerapi.SchedulerMessage] = (*slotStream)(nil)

func (s *slotStream) Context() context.Context { return s.ctx }

func (s *slotStream) Recv() (*workerapi.ExecutorMessage, error) {
	select {
	case m := <-s.in:
		return m, nil
	case <-s.ctx.Done():
		return nil, io.EOF
	}
}

func (s *slotStream) Send(m *workerapi.SchedulerMessage) error {
	s.out(m)
	return nil
}

func (s *slotStream) SetHeader(metadata.MD) error  { return nil }
func (s *slotStream) SendHeader(metadata.MD) error { return nil }
func (s *slotStream) SetTrailer(metadata.MD)       {}
func (s *slotStream) SendMsg(any) error            { return nil }
func (s *slotStream) RecvMsg(any) error            { return nil }
