// Package platform owns the one rule for which platform an action asks for:
// the Action's (REAPI v2.2 and later), or, when that is empty, the Command's,
// where clients older than v2.2 (Bazel 4 among them) put it. Every reader of
// platform properties (the Execute service, worker opt-in, the executor's
// additional_environment) must agree, or an action would be routed by one
// platform and configured by another.
package platform

import repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

// Of returns the platform the action asks for; nil when neither message has
// properties. cmd may be nil when the caller has not fetched it.
func Of(action *repb.Action, cmd *repb.Command) *repb.Platform {
	if p := action.GetPlatform(); len(p.GetProperties()) > 0 {
		return p
	}
	if p := cmd.GetPlatform(); len(p.GetProperties()) > 0 {
		return p
	}
	return nil
}

// Properties is Of's properties.
func Properties(action *repb.Action, cmd *repb.Command) []*repb.Platform_Property {
	return Of(action, cmd).GetProperties()
}
