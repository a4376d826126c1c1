package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// opsStatus is the part of /status the ops tests read.
type opsStatus struct {
	Generation    uint64 `json:"generation"`
	Queued        int    `json:"queued"`
	Operations    int    `json:"operations"`
	FinishedTotal int64  `json:"finished_total"`
	Executors     []struct {
		Name    string `json:"name"`
		Running int    `json:"running"`
	} `json:"executors"`
	Queue    []json.RawMessage `json:"queue"`
	InFlight []json.RawMessage `json:"in_flight"`
	Finished []struct {
		Action   string `json:"action"`
		Outcome  string `json:"outcome"`
		Executor string `json:"executor"`
		Mode     string `json:"mode"`
		Stages   []struct {
			Name string `json:"name"`
		} `json:"stages"`
	} `json:"finished"`
}

func (s opsStatus) running() int {
	n := 0
	for _, e := range s.Executors {
		n += e.Running
	}
	return n
}

func getStatus(t *testing.T, httpAddr string) opsStatus {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/status")
	if err != nil {
		t.Fatalf("GET /status: %v", err)
	}
	defer resp.Body.Close()
	var s opsStatus
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("decoding /status: %v", err)
	}
	return s
}

// scrape reads /metrics with the Prometheus text parser.
func scrape(t *testing.T, httpAddr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return families
}

// metricSum adds the values of the family's series whose labels include
// every name=value pair of match ("" matches all), counting a histogram by
// its sample count.
func metricSum(families map[string]*dto.MetricFamily, name string, match ...string) (float64, bool) {
	f, ok := families[name]
	if !ok {
		return 0, false
	}
	sum := 0.0
series:
	for _, m := range f.GetMetric() {
		for _, want := range match {
			n, v, _ := strings.Cut(want, "=")
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == n && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, true
}

// newBrowser starts Debian's headless Chromium (scripts/install-test-deps.sh
// installs it) with the flags this machine's closed network needs.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium is not installed (run scripts/install-test-deps.sh): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// pageNumbers loads the status page in the browser and reads the summary
// numbers it shows, by element id.
func pageNumbers(t *testing.T, ctx context.Context, httpAddr string) map[string]int {
	t.Helper()
	ids := []string{"generation", "queued", "in-flight", "running", "finished-total", "executor-count"}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(rctx, chromedp.Navigate("http://"+httpAddr+"/?refresh=0")); err != nil {
		t.Fatalf("loading the status page: %v", err)
	}
	list, _ := json.Marshal(ids)
	texts, err := chromedp.Run(rctx, chromedp.Evaluate[map[string]string](
		`Object.fromEntries(`+string(list)+`.map(id => [id, document.getElementById(id).textContent]))`))
	if err != nil {
		t.Fatalf("reading the status page: %v", err)
	}
	out := map[string]int{}
	for _, id := range ids {
		n, err := strconv.Atoi(strings.TrimSpace(texts[id]))
		if err != nil {
			t.Fatalf("#%s shows %q, not a number", id, texts[id])
		}
		out[id] = n
	}
	return out
}

// opsWorkspace is a Bazel workspace of n genrules that each sleep
// half a second, and one that concatenates their outputs.
func opsWorkspace(n int) map[string]string {
	var build, srcs strings.Builder
	for i := range n {
		fmt.Fprintf(&build, "genrule(\n    name = \"s%02d\",\n    outs = [\"s%02d.txt\"],\n    cmd = \"sleep 0.5 && echo %d > $@\",\n)\n\n", i, i, i)
		fmt.Fprintf(&srcs, "\":s%02d\", ", i)
	}
	fmt.Fprintf(&build, "genrule(\n    name = \"all\",\n    srcs = [%s],\n    outs = [\"all.txt\"],\n    cmd = \"cat $(SRCS) > $@\",\n)\n", srcs.String())
	return map[string]string{
		"WORKSPACE": `workspace(name = "ops")

local_repository(name = "rules_cc", path = "../stubs/rules_cc")

local_repository(name = "rules_java", path = "../stubs/rules_java")

local_repository(name = "remote_coverage_tools", path = "../stubs/remote_coverage_tools")
`,
		"BUILD": build.String(),
	}
}

// TestStatusPageAndMetrics runs a Bazel build through `hearth serve` and,
// while actions queue and run, loads the status page in headless Chromium
// and scrapes /metrics: the page must show the numbers /status reports, and
// the key series must exist and move. A clean rebuild then comes from the
// action cache, which the metrics must show too.
func TestStatusPageAndMetrics(t *testing.T) {
	const genrules = 24
	const actions = genrules + 1
	browser := newBrowser(t)
	b := newGeneratedBazel(t, opsWorkspace(genrules))
	buildStarted, buildFinished := false, make(chan struct{})
	t.Cleanup(func() {
		if buildStarted {
			<-buildFinished
		}
	})
	srv := startServe(t, t.TempDir(), "--max-inflight", "2")
	// The embedded executor connects just after the server starts serving.
	for wait := time.Now().Add(30 * time.Second); len(getStatus(t, srv.HTTPAddr).Executors) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(wait) {
			t.Fatal("the embedded executor never connected")
		}
	}
	before := scrape(t, srv.HTTPAddr)
	for _, name := range []string{"hearth_grpc_server_handled_total", "hearth_cas_bytes_written_total", "hearth_cas_disk_bytes",
		"hearth_scheduler_executors_connected", "hearth_scheduler_actions_total", "hearth_ac_hits_total", "go_goroutines"} {
		if _, ok := before[name]; !ok {
			t.Errorf("/metrics lacks %s before any build", name)
		}
	}
	if n, _ := metricSum(before, "hearth_scheduler_executors_connected"); n != 1 {
		t.Errorf("hearth_scheduler_executors_connected = %v, want 1", n)
	}

	type buildResult struct {
		out string
		err error
	}
	done := make(chan buildResult, 1)
	buildStarted = true
	go func() {
		defer close(buildFinished)
		out, err := b.runErr("build", append(remoteExecutionFlags(srv.GRPCAddr), "--jobs=8", "//:all")...)
		done <- buildResult{out, err}
	}()

	// While actions queue: the page against /status. A generation that did
	// not change across the page load means the page saw that same state.
	deadline := time.Now().Add(2 * time.Minute)
	compared := false
	var result *buildResult
	for !compared && result == nil && time.Now().Before(deadline) {
		select {
		case r := <-done:
			result = &r
			continue
		default:
		}
		st1 := getStatus(t, srv.HTTPAddr)
		if len(st1.InFlight) == 0 || st1.Queued == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		shown := pageNumbers(t, browser, srv.HTTPAddr)
		st2 := getStatus(t, srv.HTTPAddr)
		if st1.Generation != st2.Generation || st1.running() != st2.running() {
			continue // something moved during the load; try again
		}
		want := map[string]int{
			"generation": int(st2.Generation), "queued": len(st2.Queue), "in-flight": len(st2.InFlight),
			"running": st2.running(), "finished-total": int(st2.FinishedTotal), "executor-count": len(st2.Executors),
		}
		for k, v := range want {
			if shown[k] != v {
				t.Errorf("the page shows %s = %d, /status says %d", k, shown[k], v)
			}
		}
		if st2.Queued != len(st2.Queue) {
			t.Errorf("/status: queued = %d but the queue lists %d", st2.Queued, len(st2.Queue))
		}
		if shown["queued"] == 0 || shown["in-flight"] == 0 || shown["running"] == 0 {
			t.Errorf("mid-build, the page shows nothing queued or running: %v", shown)
		}
		compared = true
		mid := scrape(t, srv.HTTPAddr)
		if n, _ := metricSum(mid, "hearth_scheduler_queue_depth"); n < 1 {
			t.Errorf("mid-build, hearth_scheduler_queue_depth sums to %v, want ≥ 1", n)
		}
		if n, _ := metricSum(mid, "hearth_scheduler_actions_running"); n < 1 {
			t.Errorf("mid-build, hearth_scheduler_actions_running = %v, want ≥ 1", n)
		}
		t.Logf("page during the build: %v", shown)
	}
	if !compared {
		t.Fatalf("never caught a stable state with actions queued and running (build ended: %v)", result != nil)
	}
	if result == nil {
		r := <-done
		result = &r
	}
	if result.err != nil {
		t.Fatalf("the build failed: %v\n%s", result.err, tailLines(result.out, 40))
	}

	after := scrape(t, srv.HTTPAddr)
	checkMoved(t, before, after, []moved{
		{"hearth_grpc_server_handled_total", []string{"grpc_method=Execute", "grpc_code=OK"}, actions},
		{"hearth_grpc_server_handling_seconds", []string{"grpc_method=FindMissingBlobs"}, 1},
		{"hearth_scheduler_actions_total", []string{"outcome=success"}, actions},
		{"hearth_scheduler_queue_wait_seconds", nil, actions},
		{"hearth_scheduler_execution_seconds", []string{"outcome=success"}, actions},
		{"hearth_executor_actions_total", []string{"outcome=success"}, actions},
		{"hearth_executor_action_seconds", nil, actions},
		{"hearth_ac_misses_total", nil, actions},
		{"hearth_cas_blobs_written_total", nil, actions},
		{"hearth_cas_bytes_written_total", nil, 1},
		{"hearth_cas_disk_bytes", nil, 1},
	})
	if n, _ := metricSum(after, "hearth_scheduler_queue_depth"); n != 0 {
		t.Errorf("after the build, hearth_scheduler_queue_depth sums to %v, want 0", n)
	}

	st := getStatus(t, srv.HTTPAddr)
	if st.FinishedTotal != int64(actions) || len(st.Finished) != actions {
		t.Errorf("/status after the build: finished_total %d, %d listed, want %d", st.FinishedTotal, len(st.Finished), actions)
	}
	for _, f := range st.Finished {
		if f.Outcome != "success" || f.Executor == "" || f.Mode != "one-shot" || len(f.Stages) == 0 {
			t.Errorf("finished operation %+v: want outcome success, an executor, mode one-shot and stage timestamps", f)
			break
		}
	}
	shown := pageNumbers(t, browser, srv.HTTPAddr)
	if shown["finished-total"] != actions || shown["queued"] != 0 || shown["in-flight"] != 0 {
		t.Errorf("after the build the page shows %v, want %d finished and nothing queued or in flight", shown, actions)
	}
	rctx, cancel := context.WithTimeout(browser, 30*time.Second)
	defer cancel()
	rows, err := chromedp.Run(rctx, chromedp.Evaluate[int](`document.querySelectorAll("#finished tr.op").length`))
	if err != nil {
		t.Fatal(err)
	}
	if rows != actions {
		t.Errorf("the page lists %d finished operations, want %d", rows, actions)
	}

	// A clean rebuild: every action from the action cache.
	b.run("clean")
	b.run("build", append(remoteExecutionFlags(srv.GRPCAddr), "--jobs=8", "//:all")...)
	checkMoved(t, after, scrape(t, srv.HTTPAddr), []moved{
		{"hearth_ac_hits_total", nil, actions},
		{"hearth_grpc_server_handled_total", []string{"grpc_method=GetActionResult", "grpc_code=OK"}, actions},
		{"hearth_cas_bytes_read_total", nil, 1},
	})
}

// moved is a series that must have grown by at least min.
type moved struct {
	name  string
	match []string
	min   float64
}

func checkMoved(t *testing.T, before, after map[string]*dto.MetricFamily, ms []moved) {
	t.Helper()
	for _, m := range ms {
		b, _ := metricSum(before, m.name, m.match...)
		a, ok := metricSum(after, m.name, m.match...)
		if !ok || a-b < m.min {
			t.Errorf("%s%v went from %v to %v (present: %v), want an increase of at least %v", m.name, m.match, b, a, ok, m.min)
		}
	}
}

// checkPoolMetrics compares a pool key's /metrics series with what /status
// reports for it.
func checkPoolMetrics(t *testing.T, p *hearthProcess, key string, warmHits, coldStarts int64) {
	t.Helper()
	m := scrape(t, p.HTTPAddr)
	label := "key=" + key[:min(12, len(key))]
	for _, c := range []struct {
		name  string
		match []string
		want  float64
	}{
		{"hearth_worker_warm_hits_total", []string{label}, float64(warmHits)},
		{"hearth_worker_cold_starts_total", []string{label}, float64(coldStarts)},
		{"hearth_worker_action_seconds", []string{label, "start=warm"}, float64(warmHits)},
		{"hearth_worker_action_seconds", []string{label, "start=cold"}, float64(coldStarts)},
	} {
		if got, _ := metricSum(m, c.name, c.match...); got != c.want {
			t.Errorf("%s%v = %v, want %v as /status says", c.name, c.match, got, c.want)
		}
	}
	if n, _ := metricSum(m, "hearth_worker_processes", label); n < 1 {
		t.Errorf("hearth_worker_processes{%s} = %v, want ≥ 1 live worker", label, n)
	}
}

// TestStatusPageNeedsToken: with auth configured, the HTTP port asks for
// the same credentials as the gRPC APIs, except /healthz.
func TestStatusPageNeedsToken(t *testing.T) {
	s := newAccessSetup(t)
	srv := startServer(t, "server", t.TempDir(), nil, "--config-server", s.writeConfig(t, false))
	get := func(path, token string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+srv.HTTPAddr+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, path := range []string{"/", "/status", "/metrics"} {
		if code, body := get(path, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d, want 401\n%.200s", path, code, body)
		}
		if code, _ := get(path, "not-a-token"); code != http.StatusUnauthorized {
			t.Errorf("GET %s with a wrong token: %d, want 401", path, code)
		}
		if code, body := get(path, s.tokens["readonly"]); code != http.StatusOK {
			t.Errorf("GET %s with the read-only token: %d, want 200\n%.200s", path, code, body)
		}
	}
	if code, _ := get("/healthz", ""); code != http.StatusOK {
		t.Errorf("GET /healthz without a token: %d, want 200 (probes carry no credentials)", code)
	}
	if _, body := get("/", s.tokens["ci"]); !strings.Contains(body, `id="generation"`) {
		t.Errorf("the status page with a token does not look like one:\n%.300s", body)
	}
}

// --http-pprof serves Go's runtime profiles on the HTTP port (for an
// operator's `go tool pprof http://HOST:8981/debug/pprof/profile`); without
// it they are not there.
func TestHTTPPprof(t *testing.T) {
	get := func(addr string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	on := startServe(t, t.TempDir(), "--http-pprof")
	if code, body := get(on.HTTPAddr); code != http.StatusOK || !strings.Contains(body, "goroutine profile: total") {
		t.Errorf("with --http-pprof: %d %.200q", code, body)
	}
	off := startServe(t, t.TempDir())
	if code, _ := get(off.HTTPAddr); code != http.StatusNotFound {
		t.Errorf("without --http-pprof: %d, want 404", code)
	}
}
