package workerpolicy

import (
	"testing"

	"github.com/hearth-build/hearth/internal/workeraction"
)

// The routing key recorded for a pool key is the one the scheduler computes
// from the client's platform and Command alone: the executor's entrypoint
// and additional environment change the pool key, not the routing key.
func TestRoutingKeyIsClientVisible(t *testing.T) {
	w := newWorkers(t, Options{})
	for _, tc := range []struct {
		name  string
		props []string
	}{
		{"client key", []string{"persistentWorkerKey", "k"}},
		{"derived", []string{"supports-workers", "1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := workerAction([]string{"tools/javac", "@args.txt"}, tc.props...)
			a.Env = append(a.Env, "FROM_EXECUTOR=1")
			a.Entrypoint = []string{"/usr/bin/env"}
			plan := w.Plan(a)
			if plan == nil {
				t.Fatal("no plan")
			}
			want := workeraction.RoutingKeyOf(a.Action.GetPlatform().GetProperties(), a.Command)
			w.mu.Lock()
			got := w.keys[plan.Spec.Key].routingKey
			w.mu.Unlock()
			if got == "" || got != want {
				t.Fatalf("routing key %q, want %q", got, want)
			}
		})
	}
}
