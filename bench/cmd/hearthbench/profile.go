package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// CPU profiles of the real server, without changing it: with -profile DIR,
// hearthbench builds hearth with one extra file added by `go build -overlay`
// (profilingHook below). When HEARTHBENCH_PROFILE_ADDR is set, that file
// serves /start and /stop on a loopback port, which start and stop a CPU
// profile written to a file the harness names. Without -profile the binary
// is built from the tree as it is, and the headline numbers come from that.

// profilingHook is added to package main of cmd/hearth.
const profilingHook = `package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"sync"
)

func init() {
	addr := os.Getenv("HEARTHBENCH_PROFILE_ADDR")
	if addr == "" {
		return
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hearthbench profiling hook:", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	var out *os.File
	mux := http.NewServeMux()
	mux.HandleFunc("/start", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		f, err := os.Create(r.URL.Query().Get("path"))
		if err == nil {
			if err = pprof.StartCPUProfile(f); err != nil {
				f.Close()
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out = f
	})
	mux.HandleFunc("/stop", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if out == nil {
			http.Error(w, "no profile running", http.StatusConflict)
			return
		}
		pprof.StopCPUProfile()
		err := out.Close()
		out = nil
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	fmt.Fprintf(os.Stderr, "hearthbench profiling on %s\n", l.Addr())
	go http.Serve(l, mux)
}
`

// profileLine is what the hook prints once it listens.
const profileLine = "hearthbench profiling on "

// buildProfilingHearth builds cmd/hearth with profilingHook added.
func buildProfilingHearth(ctx context.Context, moduleRoot, dir string) (string, error) {
	hook := filepath.Join(dir, "zz_hearthbench_profile.go")
	if err := os.WriteFile(hook, []byte(profilingHook), 0o644); err != nil {
		return "", err
	}
	overlay, err := json.Marshal(map[string]map[string]string{
		"Replace": {filepath.Join(moduleRoot, "cmd", "hearth", "zz_hearthbench_profile.go"): hook},
	})
	if err != nil {
		return "", err
	}
	overlayPath := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayPath, overlay, 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "hearth-profiling")
	cmd := exec.CommandContext(ctx, "go", "build", "-overlay", overlayPath, "-o", bin, "github.com/hearth-build/hearth/cmd/hearth")
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cmd/hearth with the profiling hook: %w\n%s", err, out)
	}
	return bin, nil
}

// profile starts a CPU profile of the server named name (a file in the
// -profile directory) and returns the function that stops it. Without
// -profile it does nothing. A profile that fails is logged, not fatal: it
// does not change what is measured.
func (b *bench) profile(s *hearthServer, name string) (stop func()) {
	if b.opts.profileDir == "" {
		return func() {}
	}
	addr := s.log.profileAddr()
	if addr == "" {
		b.logger.Warn("cannot profile: the server printed no profiling line", "profile", name)
		return func() {}
	}
	path := filepath.Join(b.opts.profileDir, name+".pprof")
	call := func(op string) error {
		u := "http://" + addr + "/" + op
		if op == "start" {
			u += "?path=" + url.QueryEscape(path)
		}
		client := http.Client{Timeout: 30 * time.Second}
		resp, err := client.Get(u)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("profiling %s: %s: %s", name, op, resp.Status)
		}
		return nil
	}
	if err := call("start"); err != nil {
		b.logger.Warn("cannot profile", "profile", name, "err", err)
		return func() {}
	}
	return func() {
		if err := call("stop"); err != nil {
			b.logger.Warn("profile failed", "profile", name, "err", err)
		} else {
			b.logger.Info("wrote server CPU profile", "path", path)
		}
	}
}

// profileAddr returns the address the profiling hook printed, if any.
func (l *serverLog) profileAddr() string {
	line, ok := l.find(profileLine)
	if !ok {
		return ""
	}
	return strings.TrimSpace(strings.TrimPrefix(line, profileLine))
}
