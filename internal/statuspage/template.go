package statuspage

import (
	"fmt"
	"html/template"
	"sort"
	"strings"
	"time"
)

// view is what the template renders.
type view struct {
	Snapshot
	RefreshSeconds int
	Title          string
	// Worker: a `hearth worker` page, with no scheduler behind it.
	Worker bool
}

// Running sums the executors' running actions.
func (v view) Running() int {
	n := 0
	for _, e := range v.Executors {
		n += e.Running
	}
	return n
}

// OutcomeList is the outcomes in a stable order.
func (v view) OutcomeList() [][2]string {
	var out [][2]string
	for k, n := range v.Outcomes {
		out = append(out, [2]string{k, fmt.Sprint(n)})
	}
	sort.Slice(out, func(a, b int) bool { return out[a][0] < out[b][0] })
	return out
}

var funcs = template.FuncMap{
	"short": func(s string) string {
		if len(s) > 12 {
			return s[:12]
		}
		return s
	},
	"ms": func(f float64) string {
		if f == 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f ms", f)
	},
	"x": func(f float64) string {
		if f == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f×", f)
	},
	"clock": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Format("15:04:05.000")
	},
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return now.Sub(t).Round(100 * time.Millisecond).String()
	},
	"props": func(m map[string][]string) string {
		var parts []string
		for k, vs := range m {
			parts = append(parts, k+"="+strings.Join(vs, "|"))
		}
		sort.Strings(parts)
		return strings.Join(parts, " ")
	},
	"load": func(running, max int) string {
		if max == 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f%%", 100*float64(running)/float64(max))
	},
	"counts": func(m map[string]int64) string {
		var parts []string
		for k, n := range m {
			parts = append(parts, fmt.Sprintf("%s: %d", k, n))
		}
		sort.Strings(parts)
		return strings.Join(parts, ", ")
	},
	"stages": func(ss []Stage) string {
		var parts []string
		for _, s := range ss {
			parts = append(parts, fmt.Sprintf("%s +%.0f", s.Name, s.Millis))
		}
		return strings.Join(parts, ", ")
	},
}

var page = template.Must(template.New("page").Funcs(funcs).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
{{if gt .RefreshSeconds 0}}<meta http-equiv="refresh" content="{{.RefreshSeconds}}">{{end}}
<title>{{.Title}} status</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0} td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3} .num{text-align:right} code{font-size:.9em} .bad{color:#a00} .summary span{margin-right:1.5em}
</style></head><body>
<h1>{{.Title}}</h1>
{{if .Worker}}<p>This is an executor process: the queue, the operations and the other executors are on the server's page. Below: this process's persistent worker pools.</p>{{end}}
<p class="summary">
{{with .Replica}}<span>replica <b id="replica">{{.}}</b></span>{{end}}
<span>generation <b id="generation">{{.Generation}}</b></span>
<span>queued <b id="queued">{{len .Queue}}</b></span>
<span>in flight <b id="in-flight">{{len .InFlight}}</b></span>
<span>running on executors <b id="running">{{.Running}}</b></span>
<span>finished <b id="finished-total">{{.FinishedTotal}}</b></span>
<span>executors <b id="executor-count">{{len .Executors}}</b></span>
<span>operations <b id="operations">{{.Operations}}</b></span>
</p>
{{with .Shared}}<p class="summary">Shared by every replica:
<span>queued <b id="shared-queued">{{.Queued}}</b></span>
<span>leased <b id="shared-leased">{{.Leased}}</b></span>
{{range .Queues}}<span class="shared-queue">{{.Platform}}{{with .Timeout}} ({{.}}){{end}} <b>{{.Queued}}</b></span>{{end}}
{{with .Error}}<span class="bad" id="shared-error">shared state unreachable: {{.}}</span>{{end}}</p>{{end}}
<p>Outcomes: {{range .OutcomeList}}<span class="outcome" data-outcome="{{index . 0}}">{{index . 0}} <b>{{index . 1}}</b></span> {{end}}</p>
<p><small>{{clock .Time}}{{if gt .RefreshSeconds 0}}, refreshes every {{.RefreshSeconds}} s{{end}} · <a href="/status">/status</a> · <a href="/metrics">/metrics</a></small></p>

<h2>Executors</h2>
<table id="executors"><tr><th>name</th><th>running</th><th>max</th><th>load</th><th>accepting</th><th>warm keys</th><th>properties</th></tr>
{{range .Executors}}<tr class="executor" data-name="{{.Name}}"><td>{{.Name}}</td><td class="num running">{{.Running}}</td><td class="num">{{.MaxInflight}}</td><td class="num">{{load .Running .MaxInflight}}</td><td>{{.Accepting}}</td><td>{{len .WarmKeys}}</td><td><code>{{props .Properties}}</code></td></tr>
{{else}}<tr><td colspan="7">{{if .Worker}}see the server{{else}}none connected{{end}}</td></tr>{{end}}</table>

<h2>Queue</h2>
<table id="queue"><tr><th>action</th><th>platform</th><th>attempt</th><th>waiting</th></tr>
{{$now := .Time}}{{range .Queue}}<tr class="op"><td><code>{{short .Action}}</code></td><td><code>{{.Platform}}</code></td><td class="num">{{.Attempt}}</td><td class="num">{{ago $now .QueuedAt}}</td></tr>
{{else}}<tr><td colspan="4">empty</td></tr>{{end}}</table>

<h2>In flight</h2>
<table id="in-flight-ops"><tr><th>action</th><th>executor</th><th>attempt</th><th>running for</th></tr>
{{range .InFlight}}<tr class="op"><td><code>{{short .Action}}</code></td><td>{{.Executor}}</td><td class="num">{{.Attempt}}</td><td class="num">{{ago $now .StartedAt}}</td></tr>
{{else}}<tr><td colspan="4">none</td></tr>{{end}}</table>

<h2>Recently finished</h2>
<table id="finished"><tr><th>action</th><th>outcome</th><th>exit</th><th>duration</th><th>executor</th><th>mode</th><th>stages (ms after worker start)</th></tr>
{{range .Finished}}<tr class="op" data-outcome="{{.Outcome}}"><td><code title="{{.Action}}">{{short .Action}}</code></td><td>{{.Outcome}}</td><td class="num">{{.ExitCode}}</td><td class="num">{{ms .DurationMillis}}</td><td>{{.Executor}}</td><td>{{.Mode}}{{if .FallbackReason}} <small>({{.FallbackReason}})</small>{{end}}</td><td><small>{{stages .Stages}}</small></td></tr>
{{else}}<tr><td colspan="7">none yet</td></tr>{{end}}</table>

<h2>Persistent worker pools</h2>
<table id="pools"><tr><th>executor</th><th>key</th><th>idle</th><th>busy</th><th>warm hits</th><th>cold starts</th><th>median warm</th><th>median cold</th><th>warm speedup</th><th>fallbacks</th><th>recycles</th></tr>
{{range .Pools}}<tr class="pool"><td>{{.Executor}}</td><td><code title="{{.Key}}">{{short .Key}}</code></td><td class="num">{{.Idle}}</td><td class="num">{{.Busy}}</td><td class="num">{{.WarmHits}}</td><td class="num">{{.ColdStarts}}</td><td class="num">{{ms .MedianWarmMs}}</td><td class="num">{{ms .MedianColdMs}}</td><td class="num">{{x .Speedup}}</td><td>{{counts .Fallbacks}}</td><td>{{counts .Recycles}}</td></tr>
{{else}}<tr><td colspan="11">none</td></tr>{{end}}</table>

<h2>Quarantined keys</h2>
<table id="quarantined"><tr><th>executor</th><th>key</th><th>why</th><th>differing paths</th></tr>
{{range .Quarantined}}<tr class="bad"><td>{{.Executor}}</td><td><code title="{{.Key}}">{{short .Key}}</code></td><td>{{.Quarantined}}</td><td>{{range .MismatchedPaths}}<code>{{.}}</code> {{end}}</td></tr>
{{else}}<tr><td colspan="4">none</td></tr>{{end}}</table>

<h2>Recent failures</h2>
<table id="failures"><tr><th>when</th><th>action</th><th>outcome</th><th>exit</th><th>executor</th><th>status</th></tr>
{{range .Failures}}<tr class="bad"><td>{{clock .FinishedAt}}</td><td><code title="{{.Action}}">{{short .Action}}</code></td><td>{{.Outcome}}</td><td class="num">{{.ExitCode}}</td><td>{{.Executor}}</td><td>{{.Status}}</td></tr>
{{else}}<tr><td colspan="6">none</td></tr>{{end}}</table>
</body></html>
`))
