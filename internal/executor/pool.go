package executor

import (
	"fmt"

	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/sandbox"
	"github.com/hearth-build/hearth/internal/workerpool"
)

// PoolOptions maps the persistent_workers configuration to the worker
// pool's options, with dir holding the workers' workspaces. Protocols and
// VerifyFraction are the builder's decisions (which actions to send to a pool
// and which to double-check), not the pool's; Prepare and Logger are the
// caller's to set.
func PoolOptions(pw *config.PersistentWorkers, dir string) (workerpool.Options, error) {
	kind, err := sandboxKind(pw.Sandbox)
	if err != nil {
		return workerpool.Options{}, fmt.Errorf("persistent_workers.sandbox: %w", err)
	}
	return workerpool.Options{
		Dir:                 dir,
		MaxWorkersPerKey:    pw.MaxWorkersPerPool,
		MaxInvocations:      pw.MaxInvocations,
		IdleTimeout:         pw.IdleTimeout,
		MemoryLimitBytes:    pw.MemoryLimitBytes,
		MaxTotalMemoryBytes: pw.MaxTotalMemoryBytes,
		Prewarm:             pw.Prewarm,
		Sandbox:             kind,
	}, nil
}

// sandboxKind maps the configuration's sandbox value to the sandbox
// package's, rejecting a value this build does not know.
func sandboxKind(k config.SandboxKind) (sandbox.Kind, error) {
	switch k {
	case config.SandboxNone:
		return sandbox.None, nil
	case config.SandboxBwrap:
		return sandbox.Bwrap, nil
	}
	return 0, fmt.Errorf("unknown sandbox %v", k)
}
