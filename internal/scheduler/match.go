package scheduler

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// IsWorkerHint reports whether a platform property only tells an executor how
// it may run the action (persistent worker hints), so it is never used to
// choose an executor: an action that carries it is still correctly run
// one-shot by any executor.
func IsWorkerHint(name string) bool {
	return strings.HasPrefix(name, "persistentWorker") ||
		strings.HasPrefix(name, "supports-") ||
		name == "requires-worker-protocol"
}

// caseInsensitive lists properties whose values are compared without regard
// to case: clients write OSFamily as "linux" or "Linux".
var caseInsensitive = map[string]bool{"OSFamily": true}

// capabilities is what one executor offers.
type capabilities struct {
	props      map[string][]string
	minimums   map[string]bool
	maxTimeout time.Duration // 0: no limit
}

// unmatched returns the required properties this executor does not satisfy,
// as "name=value" strings, or nil if it can take the action.
func (c *capabilities) unmatched(required []*repb.Platform_Property) []string {
	var missing []string
	for _, p := range required {
		if IsWorkerHint(p.GetName()) {
			continue
		}
		if !c.offers(p.GetName(), p.GetValue()) {
			missing = append(missing, p.GetName()+"="+p.GetValue())
		}
	}
	return missing
}

func (c *capabilities) offers(name, want string) bool {
	have := c.props[name]
	if c.minimums[name] {
		need, err := strconv.ParseInt(want, 10, 64)
		if err != nil {
			return false
		}
		for _, h := range have {
			if v, err := strconv.ParseInt(h, 10, 64); err == nil && v >= need {
				return true
			}
		}
		return false
	}
	for _, h := range have {
		if h == want || caseInsensitive[name] && strings.EqualFold(h, want) {
			return true
		}
	}
	return false
}

func (c *capabilities) acceptsTimeout(d time.Duration) bool {
	return c.maxTimeout == 0 || d <= c.maxTimeout
}

// describeUnmatched explains why no executor can take an action, naming the
// properties that the closest executor lacks.
func describeUnmatched(required []*repb.Platform_Property, execs []*capabilities) string {
	best := []string(nil)
	for _, c := range execs {
		m := c.unmatched(required)
		if best == nil || len(m) < len(best) {
			best = m
		}
	}
	sort.Strings(best)
	return fmt.Sprintf("no connected executor offers the platform properties %s (%d executors connected)", strings.Join(best, ", "), len(execs))
}
