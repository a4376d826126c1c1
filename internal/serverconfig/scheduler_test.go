package serverconfig

import (
	"strings"
	"testing"
	"time"
)

func TestSchedulerRedis(t *testing.T) {
	for _, tc := range []struct {
		name, in  string
		want      *RedisScheduler
		wantErr   string
		wantEmpty bool
	}{
		{name: "absent", in: `{}`, wantEmpty: true},
		{name: "url only", in: `{scheduler: {redis: {url: "redis://127.0.0.1:6379/1"}}}`,
			want: &RedisScheduler{URL: "redis://127.0.0.1:6379/1"}},
		{name: "lease and poll", in: `{scheduler: {redis: {url: "rediss://sched.example:6379/0", lease: "9s", poll: "500ms"}}}`,
			want: &RedisScheduler{URL: "rediss://sched.example:6379/0", Lease: 9 * time.Second, Poll: 500 * time.Millisecond}},
		{name: "plaintext off loopback", in: `{scheduler: {redis: {url: "redis://sched.example:6379/0"}}}`, wantErr: "scheduler.redis.url"},
		{name: "url missing", in: `{scheduler: {redis: {lease: "30s"}}}`, wantErr: "scheduler.redis.url"},
		{name: "lease too short", in: `{scheduler: {redis: {url: "redis://127.0.0.1:1/0", lease: "100ms"}}}`, wantErr: "scheduler.redis.lease"},
		{name: "poll beyond a third of the lease", in: `{scheduler: {redis: {url: "redis://127.0.0.1:1/0", lease: "3s", poll: "2s"}}}`, wantErr: "scheduler.redis.poll"},
		{name: "replica", in: `{scheduler: {redis: {url: "redis://127.0.0.1:6379/1", replica: "east-1"}}}`,
			want: &RedisScheduler{URL: "redis://127.0.0.1:6379/1", Replica: "east-1"}},
		{name: "replica empty", in: `{scheduler: {redis: {url: "redis://127.0.0.1:1/0", replica: ""}}}`, wantErr: "scheduler.redis.replica: is empty"},
		{name: "replica with a space", in: `{scheduler: {redis: {url: "redis://127.0.0.1:1/0", replica: "a b"}}}`, wantErr: "scheduler.redis.replica: \"a b\" holds a space"},
		{name: "replica too long", in: `{scheduler: {redis: {url: "redis://127.0.0.1:1/0", replica: "` + strings.Repeat("r", 129) + `"}}}`, wantErr: "scheduler.redis.replica: is 129 bytes"},
		{name: "replica not a string", in: `{scheduler: {redis: {url: "redis://127.0.0.1:1/0", replica: 3}}}`, wantErr: "scheduler.redis.replica"},
		{name: "unknown field", in: `{scheduler: {redis: {url: "redis://127.0.0.1:1/0", ttl: 5}}}`, wantErr: "ttl"},
		{name: "unknown backend", in: `{scheduler: {etcd: {}}}`, wantErr: "etcd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantEmpty {
				if f.Scheduler != nil {
					t.Fatalf("Scheduler = %+v, want nil", f.Scheduler)
				}
				return
			}
			if r := f.Scheduler.Redis; r == nil || *r != *tc.want {
				t.Fatalf("Scheduler.Redis = %+v, want %+v", r, tc.want)
			}
		})
	}
}
