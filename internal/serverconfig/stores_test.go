package serverconfig

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/config"
)

func stores(s3, extra string) string {
	return `{stores: {cas: {fast_slow: {fast: {filesystem: {max_bytes: "1GiB"}}, slow: {s3: {` + s3 + `}}}` + extra + `}}}`
}

const okS3 = `endpoint: "http://127.0.0.1:9000", bucket: "b", access_key_id: "k", secret_access_key: "${HEARTH_TEST_SECRET}"`

func TestParseStores(t *testing.T) {
	t.Setenv("HEARTH_TEST_SECRET", "s3cr3t")
	f, err := Parse([]byte(stores(okS3+`, prefix: "cas", region: "eu-west-1", max_concurrent_requests: 8, retries: 0`, `, index: {redis: {url: "redis://127.0.0.1:6379/2", ttl: "1h"}}`)))
	if err != nil {
		t.Fatal(err)
	}
	c := f.Stores.CAS
	want := S3{Endpoint: "127.0.0.1:9000", Bucket: "b", Region: "eu-west-1", Prefix: "cas", AccessKeyID: "k", SecretAccessKey: "s3cr3t", MaxConcurrentRequests: 8, Retries: 0}
	if c.FastMaxBytes != 1<<30 || c.S3 != want {
		t.Fatalf("parsed %+v, want max 1GiB and %+v", c, want)
	}
	if c.Index == nil || c.Index.URL != "redis://127.0.0.1:6379/2" || c.Index.TTL != time.Hour {
		t.Fatalf("index %+v", c.Index)
	}
	f, err = Parse([]byte(stores(`endpoint: "https://s3.example.com", bucket: "b", access_key_id: "k", secret_access_key: "s"`, "")))
	if err != nil {
		t.Fatal(err)
	}
	if s := f.Stores.CAS.S3; !s.Secure || s.Endpoint != "s3.example.com" || s.Region != DefaultS3Region || s.Retries != DefaultS3Retries || s.MaxConcurrentRequests != DefaultS3MaxConcurrentRequests || f.Stores.CAS.Index != nil {
		t.Fatalf("defaults: %+v", f.Stores.CAS)
	}
	if f, err := Parse([]byte(`{}`)); err != nil || f.Stores != nil {
		t.Fatalf("no stores block: %+v, %v", f, err)
	}
}

func TestParseStoresErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"empty", `{stores: {}}`, "stores: needs cas"},
		{"no fast_slow", `{stores: {cas: {}}}`, "stores.cas: needs fast_slow"},
		{"no fast", `{stores: {cas: {fast_slow: {slow: {s3: {` + okS3 + `}}}}}}`, "stores.cas.fast_slow.fast: is required"},
		{"unbounded fast", `{stores: {cas: {fast_slow: {fast: {filesystem: {}}, slow: {s3: {` + okS3 + `}}}}}}`, "stores.cas.fast_slow.fast.filesystem.max_bytes: is required"},
		{"no slow", `{stores: {cas: {fast_slow: {fast: {filesystem: {max_bytes: 10}}}}}}`, "stores.cas.fast_slow.slow: is required"},
		{"no bucket", stores(`endpoint: "http://127.0.0.1:9000", access_key_id: "k", secret_access_key: "s"`, ""), "stores.cas.fast_slow.slow.s3.bucket: is required"},
		{"no secret", stores(`endpoint: "http://127.0.0.1:9000", bucket: "b", access_key_id: "k"`, ""), "s3.secret_access_key: is required"},
		{"plain http remote", stores(`endpoint: "http://10.0.0.1:9000", bucket: "b", access_key_id: "k", secret_access_key: "s"`, ""), "s3.endpoint: \"http://10.0.0.1:9000\" is plain http to a non-loopback host"},
		{"not a url", stores(`endpoint: "127.0.0.1:9000", bucket: "b", access_key_id: "k", secret_access_key: "s"`, ""), "s3.endpoint: \"127.0.0.1:9000\" is not an endpoint URL"},
		{"unknown s3 field", stores(okS3+`, secret: "x"`, ""), "s3.secret: unknown field"},
		{"bad concurrency", stores(okS3+`, max_concurrent_requests: 0`, ""), "s3.max_concurrent_requests"},
		{"index no url", stores(okS3, `, index: {redis: {}}`), "stores.cas.index.redis.url: is required"},
		{"index plaintext remote", stores(okS3, `, index: {redis: {url: "redis://10.1.1.1:6379/0"}}`), "plaintext redis to a non-loopback host"},
		{"conflicting bound", `{storage: {cas_max_bytes: 10}, stores: {cas: {fast_slow: {fast: {filesystem: {max_bytes: 10}}, slow: {s3: {` + okS3 + `}}}}}}`, "storage.cas_max_bytes: conflicts with stores.cas"},
	} {
		t.Setenv("HEARTH_TEST_SECRET", "s")
		_, err := Parse([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
			continue
		}
		if !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%s: %v does not wrap config.ErrInvalid", tc.name, err)
		}
	}
}
