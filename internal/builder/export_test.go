package builder

// The switches of the per-action cuts, for the benchmarks that compare with
// and without each.
var (
	// DiffStaging: stage only the difference between a worker's requests.
	DiffStaging = &diffStaging
	// CacheTrees: remember validated Directories across actions.
	CacheTrees = &cacheTrees
	// AsyncRelease: end a served worker's lease after the result is back.
	AsyncRelease = &asyncRelease
	// AsyncRecycle: empty big one-shot action directories after the result.
	AsyncRecycle = &asyncRecycle
)

// SettleActionDirs waits for the action directories being emptied in the
// background.
func SettleActionDirs(b *Builder) { b.dirs.emptying.Wait() }
