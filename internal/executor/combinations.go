package executor

import (
	"fmt"
	"sort"

	"github.com/hearth-build/hearth/internal/config"
)

// checkCombinations rejects, at start, the settings that cannot be honoured
// together, naming both fields: an accepted setting is never dropped
// silently. What can work together does: entrypoint wraps a persistent
// worker's startup command; additional_environment joins a worker's
// environment and pool key; runner_command runs what no persistent worker
// serves.
func checkCombinations(w *config.LocalWorker) error {
	fail := func(a, b, why string) error {
		return fmt.Errorf("%w: %s and %s cannot be combined: %s", config.ErrInvalid, a, b, why)
	}
	if len(w.RunnerCommand) > 0 {
		// The runner receives the whole Action and runs it itself (the
		// runner contract has no entrypoint, environment or sandbox).
		switch {
		case len(w.Entrypoint) > 0:
			return fail("runner_command", "entrypoint", "the runner runs the Command itself; wrap the runner in runner_command instead")
		case len(w.AdditionalEnvironment) > 0:
			return fail("runner_command", "additional_environment", "the runner runs the Command with its own environment only")
		case w.Sandbox != config.SandboxNone:
			return fail("runner_command", "sandbox", "the runner needs the network to reach the CAS; sandbox the actions in the runner")
		case w.TimeoutHandledExternally:
			return fail("runner_command", "timeout_handled_externally", "the runner enforces the action's timeout itself")
		}
	}
	if w.PersistentWorkers.Enabled {
		names := make([]string, 0, len(w.AdditionalEnvironment))
		for name := range w.AdditionalEnvironment {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			switch k := w.AdditionalEnvironment[name].Kind; k {
			case config.EnvSideChannelFile, config.EnvActionDirectory:
				return fail(fmt.Sprintf("additional_environment.%s (%s)", name, k), "persistent_workers",
					"a worker process outlives every action directory; set persistent_workers.enabled: false or drop the variable")
			}
		}
	}
	return nil
}
