package buck2worker

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial connects to a bridge's socket the way Buck2 does: it waits for the
// socket to appear (polling from 50 ms up to 500 ms apart) until ctx ends,
// then opens a plaintext gRPC connection over it. Tests and benchmarks play
// Buck2 with it.
func Dial(ctx context.Context, socket string) (*grpc.ClientConn, error) {
	delay := 50 * time.Millisecond
	for {
		if fi, err := os.Stat(socket); err == nil && fi.Mode().Type() == os.ModeSocket {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("buck2worker: waiting for socket %s: %w", socket, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("buck2worker: %w", err)
	}
	return conn, nil
}
