package s3test

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/minio/minio-go/v7"
)

func TestRestartKeepsObjects(t *testing.T) {
	s := Start(t)
	ctx := context.Background()
	c := s.Client()
	data := []byte("acknowledged before the crash")
	if _, err := c.PutObject(ctx, s.Bucket, "k", bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("put: %v", err)
	}
	s.Stop()
	if _, err := c.StatObject(ctx, s.Bucket, "k", minio.StatObjectOptions{}); err == nil {
		t.Fatal("stat succeeded with the server stopped")
	}
	s.Start()
	o, err := c.GetObject(ctx, s.Bucket, "k", minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	got, err := io.ReadAll(o)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after restart read %q, %v; want %q", got, err, data)
	}
}
