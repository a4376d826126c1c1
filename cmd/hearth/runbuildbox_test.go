package main

import (
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// buildboxArgv is the runner command line the real buildbox-worker 1.4.30
// gives its --buildbox-run at start, with its default connection flags
// (observed with a wrapper that logged its argv).
func buildboxArgv(dir string) []string {
	return []string{
		"--remote=grpc://127.0.0.1:1", "--retry-limit=4", "--retry-delay=1000", "--request-timeout=0", "--keepalive-time=0",
		"--ra-retry-limit=4", "--ra-retry-delay=1000", "--ra-request-timeout=0", "--ra-keepalive-time=0",
		"--action=" + filepath.Join(dir, "a"), "--action-result=" + filepath.Join(dir, "r"),
		"--stdout-file=" + filepath.Join(dir, "o"), "--stderr-file=" + filepath.Join(dir, "e"),
		"--digest-function=SHA256", "--partial-execution-metadata-file=" + filepath.Join(dir, "p"), "--log-level=info",
	}
}

// TestRunValidateParameters: `hearth run --validate-parameters` accepts what
// buildbox-worker passes and exits 0 without reading the (empty) action or
// writing any file; a flag it cannot honour fails, naming the flag.
func TestRunValidateParameters(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		extra []string
		want  string // "" = valid; else a substring of the error
	}{
		{"buildbox-worker's defaults", nil, ""},
		{"set connection flags", []string{"--instance=i", "--access-token=" + token, "--token-reload-interval=5", "--retry-limit=2", "--retry-delay=50",
			"--request-timeout=7", "--min-throughput=0", "--keepalive-time=30", "--load-balancing-policy=round_robin", "--retry-on-code=UNAVAILABLE,internal", "--protocol=grpc"}, ""},
		{"runner args first", []string{"--disable-localcas", "--verbose", "--log-directory=" + dir}, ""},
		{"lower-case digest", []string{"--digest-function=sha256"}, ""},
		{"blake3", []string{"--digest-function=BLAKE3"}, ""},
		{"trace", []string{"--log-level=TRACE"}, ""},
		{"sha512", []string{"--digest-function=SHA512"}, "--digest-function=SHA512"},
		{"unknown flag", []string{"--post-action-command=x"}, "post-action-command"},
		{"bad log level", []string{"--log-level=loud"}, "--log-level=loud"},
		{"bad retry limit", []string{"--retry-limit=many"}, "--retry-limit"},
		{"negative delay", []string{"--retry-delay=-1"}, "--retry-delay"},
		{"bad timeout", []string{"--request-timeout=1.5"}, "--request-timeout"},
		{"keepalive under 10s", []string{"--keepalive-time=3"}, "--keepalive-time=3"},
		{"min throughput", []string{"--min-throughput=1K"}, "--min-throughput"},
		{"grpclb", []string{"--load-balancing-policy=grpclb"}, "--load-balancing-policy"},
		{"http", []string{"--protocol=http"}, "--protocol"},
		{"googleapi auth", []string{"--googleapi-auth"}, "--googleapi-auth"},
		{"credential helper", []string{"--credential-helper=/bin/true"}, "--credential-helper"},
		{"bad retry code", []string{"--retry-on-code=SOMETIMES"}, "--retry-on-code"},
		{"remote asset", []string{"--ra-remote=grpc://127.0.0.1:2"}, "--ra-remote"},
		{"ra keepalive checked too", []string{"--ra-keepalive-time=5"}, "--ra-keepalive-time=5"},
		{"token reload without token", []string{"--token-reload-interval=5"}, "--token-reload-interval"},
		{"bad token reload", []string{"--access-token=" + token, "--token-reload-interval=soon"}, "--token-reload-interval"},
		{"aliases disagree", []string{"--access-token=" + token, "--token-file=" + dir + "/other"}, "--token-file"},
		{"missing token file", []string{"--access-token=" + dir + "/absent"}, "--token-file (--access-token)"},
		{"half a client cert", []string{"--client-cert=" + token}, "--tls-key (--client-key)"},
		{"log directory absent", []string{"--log-directory=" + dir + "/absent"}, "--log-directory"},
		{"no remote", []string{"--remote="}, "--remote is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append(buildboxArgv(dir), tc.extra...), "--validate-parameters")
			err := runRun(args)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
			for _, f := range []string{"r", "r.error-status", "p", "o", "e"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
					t.Errorf("--validate-parameters wrote %s", f)
				}
			}
		})
	}
}

// TestConnSettings: the connection flags become the settings they name.
func TestConnSettings(t *testing.T) {
	c := connFlags{retryLimit: "4", retryDelay: "1000", requestTimeout: "7", keepaliveTime: "0", minThroughput: "0", retryOnCode: listFlag{"internal", "UNKNOWN"}, lbPolicy: "round_robin", tokenReload: "2H"}
	s, err := c.settings()
	if err != nil {
		t.Fatal(err)
	}
	if s.policy.Limit != 4 || s.policy.Delay != time.Second || s.policy.Timeout != 7*time.Second {
		t.Errorf("policy %+v", s.policy)
	}
	if len(s.policy.Codes) != 2 || s.policy.Codes[0] != codes.Internal || s.policy.Codes[1] != codes.Unknown {
		t.Errorf("codes %v", s.policy.Codes)
	}
	if s.keepalive == nil || s.keepalive.Time != time.Duration(math.MaxInt64) {
		t.Errorf("--keepalive-time=0 gave %+v, want pings off", s.keepalive)
	}
	if !strings.Contains(s.serviceConfig, "round_robin") || s.tokenReload != 2*time.Hour {
		t.Errorf("service config %q, token reload %v", s.serviceConfig, s.tokenReload)
	}
	c = connFlags{retryLimit: "0", retryDelay: "100", requestTimeout: "0", keepaliveTime: "45", minThroughput: "0"}
	if s, err = c.settings(); err != nil {
		t.Fatal(err)
	}
	if s.keepalive == nil || s.keepalive.Time != 45*time.Second || len(s.policy.Codes) != 1 || s.policy.Codes[0] != codes.Unavailable {
		t.Errorf("keepalive %+v, codes %v", s.keepalive, s.policy.Codes)
	}
	c.keepaliveTime = ""
	if s, _ = c.settings(); s.keepalive != nil {
		t.Errorf("no --keepalive-time changed the keepalive: %+v", s.keepalive)
	}
}

func TestSlogLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"trace": slog.LevelDebug - 4, "DEBUG": slog.LevelDebug, "info": slog.LevelInfo, "Warning": slog.LevelWarn, "error": slog.LevelError} {
		if got, err := slogLevel(in); err != nil || got != want {
			t.Errorf("slogLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := slogLevel("warn"); err == nil {
		t.Error(`slogLevel("warn") accepted; buildbox says "warning"`)
	}
}

// TestReloadingToken: --token-reload-interval re-reads the token file once
// the interval has passed, and keeps the last token if the file is gone.
func TestReloadingToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	write := func(tok string) {
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	const every = 100 * time.Millisecond
	r := &reloadingToken{path: path, every: every, token: "first", read: time.Now(), logger: slog.New(slog.DiscardHandler)}
	get := func() string {
		md, err := r.GetRequestMetadata(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return md["authorization"]
	}
	write("second")
	if got := get(); got != "Bearer first" {
		t.Errorf("before the interval: %q, want the token read first", got)
	}
	time.Sleep(every + 20*time.Millisecond)
	if got := get(); got != "Bearer second" {
		t.Errorf("after the interval: %q, want the file's new token", got)
	}
	os.Remove(path)
	time.Sleep(every + 20*time.Millisecond)
	if got := get(); got != "Bearer second" {
		t.Errorf("file gone: %q, want the last token kept", got)
	}
}

// TestRunRetryReachesCASClient: the --retry-* flags become the policy
// casclient applies to the CAS calls itself (resuming ByteStream streams),
// not only the interceptors of the connection.
func TestRunRetryReachesCASClient(t *testing.T) {
	fs, f := newRunFlags()
	if err := parseFlags(fs, buildboxArgv(t.TempDir())); err != nil {
		t.Fatal(err)
	}
	setup, err := f.check()
	if err != nil {
		t.Fatal(err)
	}
	if p := setup.retry; p.Limit != 4 || p.Delay != time.Second || len(p.Codes) != 1 || p.Codes[0] != codes.Unavailable || p.Logger == nil {
		t.Errorf("casclient policy %+v, want buildbox-worker's 4 retries 1 s apart on UNAVAILABLE, with the run's logger", p)
	}
}
