package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/metadatapb"
)

// stageStats aggregates the ExecutedActionMetadata of the actions one build
// ran on hearth, read back from the server's action cache.
type stageStats struct {
	actions            int
	queue, fetch, exec []time.Duration
	upload, overhead   []time.Duration
	warmOverhead       []time.Duration // overhead of actions served by a warm worker
	warm, cold         int             // persistent-worker actions by the worker's state
	oneShot            int             // actions that ran one-shot (no key, or a fallback)
	byExecutor         map[string][2]int
	lines              []actionLine // one per action, for writeActions
}

// actionLine is one action's stages, in the order they ran.
type actionLine struct {
	queued, completed time.Time
	text              string
}

// writeActions writes one line per action, by queue time: the gap since the
// previous action completed (the client's share on a dependency chain) and
// each stage in milliseconds.
func (s *stageStats) writeActions(path string) error {
	lines := slices.Clone(s.lines)
	sort.Slice(lines, func(i, j int) bool { return lines[i].queued.Before(lines[j].queued) })
	var b strings.Builder
	b.WriteString("# queued, then milliseconds: since the previous action completed, queued→start, input fetch, execution, output upload, start→completed; executor, worker state\n")
	for i, l := range lines {
		gap := "      -"
		if i > 0 {
			gap = fmt.Sprintf("%7.1f", float64(l.queued.Sub(lines[i-1].completed).Microseconds())/1000)
		}
		fmt.Fprintf(&b, "%s %s %s\n", l.queued.Format("15:04:05.000"), gap, l.text)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// readStageStats reads every action result under acDir whose worker
// completed after since (so a warm-up build's entries, rewritten by the
// timed build, are not counted twice).
func readStageStats(acDir string, since time.Time) (*stageStats, error) {
	s := &stageStats{byExecutor: map[string][2]int{}}
	err := filepath.WalkDir(acDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "tmp" {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		r := &repb.ActionResult{}
		if err := proto.Unmarshal(data, r); err != nil {
			return fmt.Errorf("action cache entry %s: %w", path, err)
		}
		md := r.GetExecutionMetadata()
		if md.GetWorkerCompletedTimestamp().AsTime().Before(since) {
			return nil
		}
		s.add(md)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if s.actions == 0 {
		return nil, fmt.Errorf("no action result in %s was written by the timed build", acDir)
	}
	return s, nil
}

func span(from, to *timestamppb.Timestamp) time.Duration {
	if from == nil || to == nil {
		return 0
	}
	return to.AsTime().Sub(from.AsTime())
}

func (s *stageStats) add(md *repb.ExecutedActionMetadata) {
	s.actions++
	exec := span(md.GetExecutionStartTimestamp(), md.GetExecutionCompletedTimestamp())
	overhead := span(md.GetWorkerStartTimestamp(), md.GetWorkerCompletedTimestamp()) - exec
	s.queue = append(s.queue, span(md.GetQueuedTimestamp(), md.GetWorkerStartTimestamp()))
	s.fetch = append(s.fetch, span(md.GetInputFetchStartTimestamp(), md.GetInputFetchCompletedTimestamp()))
	s.exec = append(s.exec, exec)
	s.upload = append(s.upload, span(md.GetOutputUploadStartTimestamp(), md.GetOutputUploadCompletedTimestamp()))
	s.overhead = append(s.overhead, overhead)
	var info *metadatapb.PersistentWorkerInfo
	for _, a := range md.GetAuxiliaryMetadata() {
		pw := &metadatapb.PersistentWorkerInfo{}
		if a.MessageIs(pw) && a.UnmarshalTo(pw) == nil {
			info = pw
		}
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%7.1f", float64(d.Microseconds())/1000) }
	state := "one-shot"
	if info != nil && !info.GetFellBack() {
		state = fmt.Sprintf("warm=%v invocation=%d", info.GetWarm(), info.GetInvocation())
	}
	s.lines = append(s.lines, actionLine{queued: md.GetQueuedTimestamp().AsTime(), completed: md.GetWorkerCompletedTimestamp().AsTime(), text: fmt.Sprintf("%s %s %s %s %s %s %s",
		ms(s.queue[len(s.queue)-1]), ms(s.fetch[len(s.fetch)-1]), ms(exec),
		ms(s.upload[len(s.upload)-1]), ms(span(md.GetWorkerStartTimestamp(), md.GetWorkerCompletedTimestamp())), md.GetWorker(), state)})
	counts := s.byExecutor[md.GetWorker()]
	switch {
	case info == nil || info.GetFellBack():
		s.oneShot++
	case info.GetWarm():
		s.warm++
		counts[0]++
		s.warmOverhead = append(s.warmOverhead, overhead)
	default:
		s.cold++
		counts[1]++
	}
	s.byExecutor[md.GetWorker()] = counts
}

// overheadP50 is the median overhead of the warm actions (of all actions
// when none was warm).
func (s *stageStats) overheadP50() time.Duration {
	if s == nil {
		return 0
	}
	if len(s.warmOverhead) > 0 {
		return p50(s.warmOverhead)
	}
	return p50(s.overhead)
}

func p50(ds []time.Duration) time.Duration {
	return percentile(slices.Sorted(slices.Values(ds)), 0.5)
}

func sum(ds []time.Duration) time.Duration {
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t
}

// summary is one cell: each stage's total and median.
func (s *stageStats) summary() string {
	part := func(name string, ds []time.Duration) string {
		return fmt.Sprintf("%s %s (%s)", name, formatDuration(sum(ds)), formatDuration(p50(ds)))
	}
	return fmt.Sprintf("%d actions (%d warm, %d cold, %d one-shot): %s; %s; %s; %s; overhead %s (%s; warm p50 %s)",
		s.actions, s.warm, s.cold, s.oneShot,
		part("queued→start", s.queue), part("input fetch", s.fetch), part("execution", s.exec), part("output upload", s.upload),
		formatDuration(sum(s.overhead)), formatDuration(p50(s.overhead)), formatDuration(s.overheadP50()))
}

// warmFraction is the share of persistent-worker actions served warm.
func (s *stageStats) warmFraction() float64 {
	if s.actions == 0 {
		return 0
	}
	return float64(s.warm) / float64(s.actions)
}

// perExecutor lists warm/cold counts by executor name.
func (s *stageStats) perExecutor() string {
	var names []string
	for name := range s.byExecutor {
		names = append(names, name)
	}
	sort.Strings(names)
	var parts []string
	for _, name := range names {
		c := s.byExecutor[name]
		parts = append(parts, fmt.Sprintf("%s: %d warm, %d cold", name, c[0], c[1]))
	}
	return strings.Join(parts, "; ")
}
