package workerpolicy

import (
	"fmt"
	"sort"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// DiffResults lists the outputs (by path, and "exit_code") in which a
// worker's result and a one-shot result of the same action differ: a file's
// digest or executable bit, a directory's tree, a symlink's target, or an
// output present in only one. Streams and metadata are not compared: a
// worker's stdout is the protocol, and timings always differ.
func DiffResults(a, b *repb.ActionResult) []string {
	var diff []string
	if a.GetExitCode() != b.GetExitCode() {
		diff = append(diff, "exit_code")
	}
	index := func(r *repb.ActionResult) map[string]string {
		m := map[string]string{}
		for _, f := range r.GetOutputFiles() {
			m[f.GetPath()] = fmt.Sprintf("file %s %v", f.GetDigest().GetHash(), f.GetIsExecutable())
		}
		for _, d := range r.GetOutputDirectories() {
			m[d.GetPath()] = "dir " + d.GetTreeDigest().GetHash()
		}
		for _, s := range r.GetOutputSymlinks() {
			m[s.GetPath()] = "symlink " + s.GetTarget()
		}
		return m
	}
	ia, ib := index(a), index(b)
	for p, v := range ia {
		if w, ok := ib[p]; !ok || w != v {
			diff = append(diff, p)
		}
	}
	for p := range ib {
		if _, ok := ia[p]; !ok {
			diff = append(diff, p)
		}
	}
	sort.Strings(diff)
	return diff
}
