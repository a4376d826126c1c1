package serverconfig

import (
	"strings"
	"testing"
	"time"
)

func TestActionCacheRedis(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		wantURL  string
		wantTTL  time.Duration
		wantErr  string
	}{
		{name: "absent", in: `{}`},
		{name: "url and ttl", in: `{action_cache: {redis: {url: "redis://127.0.0.1:6379/2", ttl: "24h"}}}`,
			wantURL: "redis://127.0.0.1:6379/2", wantTTL: 24 * time.Hour},
		{name: "tls off loopback", in: `{action_cache: {redis: {url: "rediss://cache.example:6379/0"}}}`,
			wantURL: "rediss://cache.example:6379/0"},
		{name: "plaintext off loopback", in: `{action_cache: {redis: {url: "redis://cache.example:6379/0"}}}`,
			wantErr: "action_cache.redis.url"},
		{name: "not a url", in: `{action_cache: {redis: {url: "http://x"}}}`, wantErr: "not a Redis URL"},
		{name: "url missing", in: `{action_cache: {redis: {ttl: 5}}}`, wantErr: "action_cache.redis.url"},
		{name: "unknown field", in: `{action_cache: {redis: {url: "redis://127.0.0.1:1/0", size: 5}}}`, wantErr: "size"},
		{name: "unknown backend", in: `{action_cache: {memcached: {}}}`, wantErr: "memcached"},
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
			if tc.wantURL == "" {
				if f.ActionCache != nil {
					t.Fatalf("ActionCache = %+v, want nil", f.ActionCache)
				}
				return
			}
			if r := f.ActionCache.Redis; r == nil || r.URL != tc.wantURL || r.TTL != tc.wantTTL {
				t.Fatalf("ActionCache.Redis = %+v, want url %q ttl %v", r, tc.wantURL, tc.wantTTL)
			}
		})
	}
}
