package statuspage

import (
	"encoding/json"
)

// Pool is one persistent worker pool key of one executor, decoded from the
// JSON the executor reports with its heartbeats (workerpolicy.Status).
type Pool struct {
	Executor        string           `json:"executor,omitempty"`
	Key             string           `json:"key"`
	ClientKey       string           `json:"client_key,omitempty"`
	Protocol        string           `json:"protocol,omitempty"`
	Starting        int              `json:"starting"`
	Idle            int              `json:"idle"`
	Busy            int              `json:"busy"`
	WarmHits        int64            `json:"warm_hits"`
	ColdStarts      int64            `json:"cold_starts"`
	Recycles        map[string]int64 `json:"recycles,omitempty"`
	Fallbacks       map[string]int64 `json:"fallbacks,omitempty"`
	Quarantined     string           `json:"quarantined,omitempty"`
	MismatchedPaths []string         `json:"mismatched_paths,omitempty"`
	MedianWarmMs    float64          `json:"median_warm_ms"`
	MedianColdMs    float64          `json:"median_cold_ms"`
	// Speedup is the cold median over the warm one (0 until both exist).
	Speedup float64 `json:"warm_speedup"`
}

func decodePools(raw json.RawMessage) []Pool {
	var st struct {
		Keys []Pool `json:"keys"`
	}
	if json.Unmarshal(raw, &st) != nil {
		return nil
	}
	for i := range st.Keys {
		p := &st.Keys[i]
		p.Executor = "" // not part of the executor's report
		if p.MedianWarmMs > 0 && p.MedianColdMs > 0 {
			p.Speedup = p.MedianColdMs / p.MedianWarmMs
		}
	}
	return st.Keys
}
