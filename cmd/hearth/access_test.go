package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckPlaintext(t *testing.T) {
	for _, tc := range []struct {
		addr     string
		insecure bool
		ok       bool
	}{
		{"127.0.0.1:8980", false, true},
		{"[::1]:8980", false, true},
		{"localhost:8980", false, true},
		{"0.0.0.0:8980", false, false},
		{":8980", false, false},
		{"[::]:8980", false, false},
		{"10.1.2.3:8980", false, false},
		{"hearth.example.com:8980", false, false},
		{"0.0.0.0:8980", true, true},
	} {
		err := checkPlaintext("gRPC", tc.addr, tc.insecure, "fix it")
		if (err == nil) != tc.ok {
			t.Errorf("checkPlaintext(%q, insecure=%v) = %v, want ok=%v", tc.addr, tc.insecure, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--insecure") {
			t.Errorf("%q: the error does not name --insecure: %v", tc.addr, err)
		}
	}
}

func TestResolveServerFlagsFlagsOverrideFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.json5")
	cfg := `{listen: "127.0.0.1:9000", http: "", storage: {data_dir: "/from/file", cas_max_bytes: "1KiB"},
		tls: {cert_file: "/c.pem", key_file: "/k.pem"}}`
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	var f serverFlags
	f.register(fs)
	if err := fs.Parse([]string{"--config-server", path, "--data", "/from/flag", "--tls-key", "/flag.key"}); err != nil {
		t.Fatal(err)
	}
	if _, err := resolveServerFlags(fs, &f); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"listen", f.listen, "127.0.0.1:9000"},
		{"http", f.httpAddr, ""},
		{"data", f.data, "/from/flag"},
		{"tls-cert", f.access.tlsCert, "/c.pem"},
		{"tls-key", f.access.tlsKey, "/flag.key"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if f.casMaxBytes != 1024 {
		t.Errorf("cas-max-bytes = %d, want 1024", f.casMaxBytes)
	}
}

// http_pprof reaches the server's flags, and asking for profiles without
// the HTTP port they are served on is refused, not ignored.
func TestHTTPPprof(t *testing.T) {
	resolve := func(cfg string, args ...string) serverFlags {
		t.Helper()
		path := filepath.Join(t.TempDir(), "server.json5")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		fs := flag.NewFlagSet("server", flag.ContinueOnError)
		var f serverFlags
		f.register(fs)
		if err := fs.Parse(append([]string{"--config-server", path}, args...)); err != nil {
			t.Fatal(err)
		}
		if _, err := resolveServerFlags(fs, &f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := resolve(`{http_pprof: true}`); !f.httpPprof || checkAccess(f) != nil {
		t.Errorf("http_pprof: true gave httpPprof %v, checkAccess %v", f.httpPprof, checkAccess(f))
	}
	if f := resolve(`{http_pprof: true}`, "--http-pprof=false"); f.httpPprof {
		t.Error("--http-pprof=false did not override the file")
	}
	f := resolve(`{http: "", http_pprof: true}`)
	if err := checkAccess(f); err == nil || !strings.Contains(err.Error(), "http-pprof") {
		t.Errorf("http_pprof without an HTTP port: %v, want an error naming it", err)
	}
}
