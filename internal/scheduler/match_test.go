package scheduler

import (
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

func props(kv ...string) []*repb.Platform_Property {
	var out []*repb.Platform_Property
	for i := 0; i < len(kv); i += 2 {
		out = append(out, &repb.Platform_Property{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

func TestMatching(t *testing.T) {
	c := &capabilities{
		props:    map[string][]string{"OSFamily": {"linux"}, "cpu_count": {"8"}, "memory_kb": {"1000"}, "pool": {"a", "b"}},
		minimums: map[string]bool{"cpu_count": true, "memory_kb": true},
	}
	tests := []struct {
		name     string
		required []*repb.Platform_Property
		match    bool
	}{
		{"nothing required", nil, true},
		{"exact", props("OSFamily", "linux"), true},
		{"OSFamily any case", props("OSFamily", "Linux"), true},
		{"other value", props("OSFamily", "windows"), false},
		{"unknown property", props("container-image", "docker://x"), false},
		{"minimum met", props("cpu_count", "8"), true},
		{"minimum below", props("cpu_count", "2"), true},
		{"minimum above", props("cpu_count", "9"), false},
		{"minimum not a number", props("cpu_count", "many"), false},
		{"one of several values", props("pool", "b"), true},
		{"two values both offered", props("pool", "a", "pool", "b"), true},
		{"value case matters elsewhere", props("pool", "A"), false},
		{"worker key is a hint", props("persistentWorkerKey", "abc"), true},
		{"worker protocol is a hint", props("persistentWorkerProtocol", "json", "requires-worker-protocol", "json"), true},
		{"supports-workers is a hint", props("supports-workers", "1", "supports-multiplex-workers", "1"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := c.unmatched(tt.required) == nil
			if got != tt.match {
				t.Errorf("match = %v, want %v (unmatched %v)", got, tt.match, c.unmatched(tt.required))
			}
		})
	}
}

func TestTimeoutLimit(t *testing.T) {
	c := &capabilities{maxTimeout: time.Minute}
	if !c.acceptsTimeout(time.Minute) || c.acceptsTimeout(time.Minute+1) {
		t.Error("limit not applied")
	}
	if !(&capabilities{}).acceptsTimeout(time.Hour * 1000) {
		t.Error("zero limit should mean none")
	}
}
