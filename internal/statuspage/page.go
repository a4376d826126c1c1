// Package statuspage owns Hearth's HTTP operations port: the status page at
// / (server-rendered HTML that refreshes itself), its data as JSON at
// /status, /metrics for Prometheus and /healthz. Everything but /healthz
// goes through the authorizer the wiring supplies, so the port is protected
// by the same principal check as the gRPC APIs when auth is configured.
package statuspage

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"sort"
	"strconv"
	"time"

	"github.com/hearth-build/hearth/internal/scheduler"
)

// Config is what the handler serves.
type Config struct {
	// Scheduler reports executors and the queue; nil on a process without a
	// scheduler (`hearth worker`), whose page then shows only Local.
	Scheduler func() scheduler.Status
	Journal   *Journal
	// Local is this process's own executors' persistent worker state (for
	// `hearth worker`, whose pools the scheduler's page shows elsewhere).
	Local func() []json.RawMessage
	// Metrics serves /metrics (promhttp.HandlerFor the process's registry).
	Metrics http.Handler
	// Authorize, if set, is asked for every request but /healthz; an error
	// answers 401 with its message.
	Authorize func(*http.Request) error
	// Middleware, if set, wraps every handler but /healthz (another way to
	// plug in authentication).
	Middleware func(http.Handler) http.Handler
	// Refresh is the page's auto-refresh period (0: 5 s; negative: off).
	Refresh time.Duration
	// Title heads the page ("Hearth" when empty).
	Title string
	// Profiling serves Go's runtime profiles (net/http/pprof) under
	// /debug/pprof/, behind the same check as /metrics: off unless asked
	// for, since a profile shows the process's internals and a CPU or
	// trace profile costs the server while it runs.
	Profiling bool
}

// Handler returns the mux of the HTTP port.
func Handler(c Config) http.Handler {
	if c.Refresh == 0 {
		c.Refresh = 5 * time.Second
	}
	if c.Title == "" {
		c.Title = "Hearth"
	}
	protect := func(h http.Handler) http.Handler {
		if c.Middleware != nil {
			h = c.Middleware(h)
		}
		if c.Authorize == nil {
			return h
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := c.Authorize(r); err != nil {
				w.Header().Set("WWW-Authenticate", `Bearer realm="hearth"`)
				http.Error(w, err.Error(), http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	if c.Metrics != nil {
		mux.Handle("GET /metrics", protect(c.Metrics))
	}
	if c.Profiling {
		mux.Handle("GET /debug/pprof/", protect(http.HandlerFunc(pprof.Index))) // and every named profile
		mux.Handle("GET /debug/pprof/cmdline", protect(http.HandlerFunc(pprof.Cmdline)))
		mux.Handle("GET /debug/pprof/profile", protect(http.HandlerFunc(pprof.Profile)))
		mux.Handle("GET /debug/pprof/symbol", protect(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("GET /debug/pprof/trace", protect(http.HandlerFunc(pprof.Trace)))
	}
	mux.Handle("GET /status", protect(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(c.snapshot())
	})))
	mux.Handle("GET /{$}", protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		refresh := c.Refresh
		if v := r.URL.Query().Get("refresh"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				http.Error(w, "refresh: "+err.Error(), http.StatusBadRequest)
				return
			}
			refresh = time.Duration(n) * time.Second
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := page.Execute(w, view{Snapshot: c.snapshot(), RefreshSeconds: int(refresh / time.Second), Title: c.Title, Worker: c.Scheduler == nil}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})))
	return mux
}

// ErrNoCredentials is what an authorizer may return for a request without
// any; any error is answered 401.
var ErrNoCredentials = errors.New("authorization: Bearer token required")

// Snapshot is /status: the scheduler's state, the journal and the pools.
type Snapshot struct {
	scheduler.Status
	JournalSnapshot
	// Pools lists every pool key of every executor; Quarantined those
	// quarantined.
	Pools       []Pool    `json:"pools"`
	Quarantined []Pool    `json:"quarantined"`
	Time        time.Time `json:"time"`
}

func (c Config) snapshot() Snapshot {
	var s Snapshot
	s.Executors = []scheduler.ExecutorStatus{}
	if c.Journal != nil {
		s.JournalSnapshot = c.Journal.Snapshot()
	}
	s.Pools, s.Quarantined = []Pool{}, []Pool{}
	add := func(executor string, raw json.RawMessage) {
		for _, p := range decodePools(raw) {
			p.Executor = executor
			s.Pools = append(s.Pools, p)
			if p.Quarantined != "" {
				s.Quarantined = append(s.Quarantined, p)
			}
		}
	}
	if c.Scheduler != nil {
		s.Status = c.Scheduler()
		for _, e := range s.Executors {
			add(e.Name, e.PersistentWorkers)
		}
	}
	if s.Queue == nil {
		s.Queue, s.InFlight, s.Finished, s.Failures, s.Outcomes = []*Op{}, []*Op{}, []*Op{}, []*Op{}, map[string]int64{}
	}
	if c.Local != nil {
		for _, raw := range c.Local() {
			add("", raw)
		}
	}
	sort.SliceStable(s.Pools, func(a, b int) bool { return s.Pools[a].Key < s.Pools[b].Key })
	s.Time = time.Now()
	return s
}
