package metrics

import (
	"sync"
)

// Other is the label value of everything past a Capper's limit.
const Other = "other"

// Capper bounds the values of one label: the first Max distinct values keep
// their own series (shortened to Width characters), every later one shares
// Other. Admission is sticky, so a series never moves between labels and
// counters stay monotonic.
type Capper struct {
	Max   int
	Width int

	mu   sync.Mutex
	seen map[string]string
}

// NewCapper returns a Capper of max values of at most width characters.
func NewCapper(max, width int) *Capper { return &Capper{Max: max, Width: width} }

// Label returns the label value for v.
func (c *Capper) Label(v string) string {
	if v == "" {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.seen[v]; ok {
		return l
	}
	if c.seen == nil {
		c.seen = map[string]string{}
	}
	if len(c.seen) >= c.Max {
		return Other
	}
	l := v
	if c.Width > 0 && len(l) > c.Width {
		l = l[:c.Width]
	}
	c.seen[v] = l
	return l
}
