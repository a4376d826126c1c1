package statuspage

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/workerpolicy"
	"github.com/hearth-build/hearth/internal/workerpool"
)

func get(t *testing.T, h http.Handler, path, token string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	body, _ := io.ReadAll(rec.Body)
	return rec.Code, string(body)
}

func TestAuthorize(t *testing.T) {
	h := Handler(Config{
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "metrics") }),
		Authorize: func(r *http.Request) error {
			if r.Header.Get("Authorization") != "Bearer good" {
				return ErrNoCredentials
			}
			return nil
		},
	})
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/healthz", "", 200}, // probes need no credentials
		{"/", "", 401}, {"/status", "", 401}, {"/metrics", "bad", 401},
		{"/", "good", 200}, {"/status", "good", 200}, {"/metrics", "good", 200},
		{"/nothing", "good", 404},
	} {
		if got, body := get(t, h, tc.path, tc.token); got != tc.want {
			t.Errorf("GET %s with token %q: %d, want %d (%s)", tc.path, tc.token, got, tc.want, body)
		}
	}
}

func TestProfiling(t *testing.T) {
	authorize := func(r *http.Request) error {
		if r.Header.Get("Authorization") != "Bearer good" {
			return ErrNoCredentials
		}
		return nil
	}
	off := Handler(Config{Authorize: authorize})
	on := Handler(Config{Authorize: authorize, Profiling: true})
	for _, tc := range []struct {
		h           http.Handler
		path, token string
		want        int
		body        string
	}{
		{off, "/debug/pprof/", "good", 404, ""},
		{off, "/debug/pprof/goroutine?debug=1", "good", 404, ""},
		{on, "/debug/pprof/goroutine?debug=1", "", 401, ""},
		{on, "/debug/pprof/", "good", 200, "goroutine"},
		{on, "/debug/pprof/goroutine?debug=1", "good", 200, "goroutine profile: total"},
		{on, "/debug/pprof/heap?debug=1", "good", 200, "heap profile"},
		{on, "/debug/pprof/cmdline", "good", 200, "statuspage"},
	} {
		got, body := get(t, tc.h, tc.path, tc.token)
		if got != tc.want || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s (profiling %v) with token %q: %d, want %d with %q:\n%.200s", tc.path, tc.h == on, tc.token, got, tc.want, tc.body, body)
		}
	}
}

func TestMiddleware(t *testing.T) {
	h := Handler(Config{Middleware: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") == "" {
				http.Error(w, "no", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	if got, _ := get(t, h, "/status", ""); got != http.StatusForbidden {
		t.Errorf("GET /status through the middleware without a token: %d, want 403", got)
	}
	if got, _ := get(t, h, "/status", "x"); got != http.StatusOK {
		t.Errorf("GET /status through the middleware with a token: %d, want 200", got)
	}
}

// TestPoolsFromBuilderStatus guards the JSON contract with the executor's
// report: the page decodes what workerpolicy.Status marshals.
func TestPoolsFromBuilderStatus(t *testing.T) {
	st := workerpolicy.Status{Keys: []workerpolicy.KeyStatus{{
		KeyStats:    workerpool.KeyStats{Key: "k1", Idle: 2, Busy: 1, WarmHits: 9, ColdStarts: 1},
		Quarantined: "outputs differ", MismatchedPaths: []string{"out/a"}, Fallbacks: map[string]int64{"staging": 2},
		MedianWarmMillis: 50, MedianColdMillis: 400,
	}}}
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	h := Handler(Config{Scheduler: func() scheduler.Status {
		return scheduler.Status{Executors: []scheduler.ExecutorStatus{{Name: "e1", MaxInflight: 4, Running: 1, PersistentWorkers: raw}}}
	}, Journal: NewJournal(10, 10)})
	_, body := get(t, h, "/status", "")
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Pools) != 1 || len(s.Quarantined) != 1 {
		t.Fatalf("pools %+v, quarantined %+v: want one of each", s.Pools, s.Quarantined)
	}
	p := s.Pools[0]
	if p.Executor != "e1" || p.Idle != 2 || p.Busy != 1 || p.WarmHits != 9 || p.ColdStarts != 1 || p.Speedup != 8 ||
		p.Fallbacks["staging"] != 2 || len(p.MismatchedPaths) != 1 {
		t.Errorf("pool = %+v", p)
	}
	_, html := get(t, h, "/", "")
	for _, want := range []string{"8.0×", "out/a", "outputs differ", `data-name="e1"`} {
		if !strings.Contains(html, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
}

func TestJournal(t *testing.T) {
	j := NewJournal(2, 1)
	d, _ := digest.New(digest.SHA256, strings.Repeat("a", 64), 3)
	ev := func(name string) scheduler.OpEvent { return scheduler.OpEvent{Name: name, Action: d} }
	for _, n := range []string{"a", "b", "c"} {
		j.Queued(ev(n))
	}
	e := ev("a")
	e.Executor = "x"
	j.Started(e)
	s := j.Snapshot()
	if len(s.Queue) != 2 || len(s.InFlight) != 1 || s.InFlight[0].Executor != "x" {
		t.Fatalf("snapshot %+v", s)
	}
	ok := ev("a")
	ok.Response = &repb.ExecuteResponse{Result: &repb.ActionResult{}}
	j.Finished(ok)
	bad := ev("b")
	bad.Response = &repb.ExecuteResponse{Result: &repb.ActionResult{ExitCode: 1}}
	j.Finished(bad)
	c := ev("c")
	c.Response = &repb.ExecuteResponse{Result: &repb.ActionResult{ExitCode: 2}}
	j.Finished(c)
	s = j.Snapshot()
	if len(s.Queue) != 0 || len(s.InFlight) != 0 || s.FinishedTotal != 3 || len(s.Finished) != 2 || len(s.Failures) != 1 {
		t.Fatalf("snapshot after finishing %+v", s)
	}
	if s.Finished[0].Name != "c" || s.Failures[0].ExitCode != 2 || s.Outcomes["exit_nonzero"] != 2 || s.Finished[1].Executor != "" {
		t.Errorf("newest first, bounded: finished %+v, failures %+v", s.Finished, s.Failures)
	}
	if s.Generation != 7 {
		t.Errorf("generation = %d, want 7 events", s.Generation)
	}
}

// A replica sharing scheduler state says which it is and shows the shared
// queues next to its own executors, in the page and in /status.
func TestPageShowsReplicaAndSharedState(t *testing.T) {
	h := Handler(Config{Scheduler: func() scheduler.Status {
		return scheduler.Status{Replica: "east-1:8980", Executors: []scheduler.ExecutorStatus{{Name: "e1", MaxInflight: 2}},
			Shared: &scheduler.SharedStatus{Queued: 4, Leased: 3, Queues: []scheduler.SharedQueue{{Platform: "OSFamily=linux", Queued: 4}}}}
	}, Journal: NewJournal(10, 10)})
	_, html := get(t, h, "/", "")
	for _, want := range []string{`<b id="replica">east-1:8980</b>`, `<b id="shared-queued">4</b>`, `<b id="shared-leased">3</b>`, `OSFamily=linux <b>4</b>`, `data-name="e1"`} {
		if !strings.Contains(html, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	_, body := get(t, h, "/status", "")
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatal(err)
	}
	if s.Replica != "east-1:8980" || s.Shared == nil || s.Shared.Queued != 4 || s.Shared.Leased != 3 || len(s.Shared.Queues) != 1 {
		t.Errorf("/status: replica %q shared %+v", s.Replica, s.Shared)
	}
	// Without shared state, neither appears.
	_, html = get(t, Handler(Config{Scheduler: func() scheduler.Status { return scheduler.Status{} }}), "/", "")
	if strings.Contains(html, `id="replica"`) || strings.Contains(html, "Shared by every replica") {
		t.Error("a single server's page shows replica fields")
	}
}
