package reapi

import (
	"fmt"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/outputs"
)

// validateCommand checks what an executor relies on: something to run, a
// well-formed environment, and output paths and a working directory that stay
// inside the action's directory. It also enforces the orders REAPI says a
// Command MUST have (environment variables, output paths, output node
// properties and platform properties sorted by code point): an unsorted
// Command is not canonical, so equal commands from two clients get different
// digests and miss each other's cache entries, which is hard to debug later.
// Bazel and current Buck2 sort all of them.
func validateCommand(cmd *repb.Command) error {
	args := cmd.GetArguments()
	if len(args) == 0 || args[0] == "" {
		return fmt.Errorf("arguments is empty: there is nothing to run")
	}
	for i, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			// execve cannot pass it: the action would fail to start.
			return fmt.Errorf("arguments[%d] %q contains a NUL byte", i, a)
		}
	}
	env := cmd.GetEnvironmentVariables()
	for i, ev := range env {
		name := ev.GetName()
		if name == "" || strings.ContainsAny(name, "=\x00") || strings.ContainsRune(ev.GetValue(), 0) {
			return fmt.Errorf("environment variable %q is not a valid name=value pair", name)
		}
		if i == 0 {
			continue
		}
		switch prev := env[i-1].GetName(); {
		case prev == name:
			return fmt.Errorf("environment variable %q is set twice", name)
		case prev > name:
			return fmt.Errorf("environment variable %q comes after %q: environment_variables must be sorted by name", name, prev)
		}
	}
	// Output paths and the working directory must stay inside the action.
	if err := outputs.Validate(cmd); err != nil {
		return err
	}
	//lint:ignore SA1019 the legacy output fields are still read (REAPI v2.0 clients).
	legacyFiles, legacyDirs := cmd.GetOutputFiles(), cmd.GetOutputDirectories()
	for _, f := range []struct {
		name string
		list []string
	}{
		{"output_paths", cmd.GetOutputPaths()},
		{"output_files", legacyFiles},
		{"output_directories", legacyDirs},
		{"output_node_properties", cmd.GetOutputNodeProperties()},
	} {
		if err := checkSorted(f.name, f.list); err != nil {
			return err
		}
	}
	//lint:ignore SA1019 clients older than REAPI v2.2 set the platform only here.
	if err := validatePlatform(cmd.GetPlatform()); err != nil {
		return fmt.Errorf("platform: %w", err)
	}
	return nil
}

// checkSorted checks that list is strictly increasing: sorted by code point
// (Go compares strings by UTF-8 bytes, which is the same order) and without
// duplicates.
func checkSorted(field string, list []string) error {
	for i := 1; i < len(list); i++ {
		switch prev, cur := list[i-1], list[i]; {
		case prev == cur:
			return fmt.Errorf("%s lists %q twice", field, cur)
		case prev > cur:
			return fmt.Errorf("%s: %q comes after %q; the list must be sorted", field, cur, prev)
		}
	}
	return nil
}

// validatePlatform checks a Platform's form: every property has a name, and
// the properties are sorted by name and then by value, as REAPI says they
// MUST be. A name may repeat (REAPI leaves that to the server; an executor must
// offer each value), but an identical name=value pair twice means nothing
// and is refused. Whether an executor offers the properties is the
// scheduler's question.
func validatePlatform(p *repb.Platform) error {
	props := p.GetProperties()
	for i, prop := range props {
		if prop.GetName() == "" {
			return fmt.Errorf("property %d has an empty name", i)
		}
		if i == 0 {
			continue
		}
		prev := props[i-1]
		switch {
		case prev.GetName() == prop.GetName() && prev.GetValue() == prop.GetValue():
			return fmt.Errorf("property %s=%q is listed twice", prop.GetName(), prop.GetValue())
		case prev.GetName() > prop.GetName() || prev.GetName() == prop.GetName() && prev.GetValue() > prop.GetValue():
			return fmt.Errorf("property %s=%q comes after %s=%q; properties must be sorted by name, then value", prop.GetName(), prop.GetValue(), prev.GetName(), prev.GetValue())
		}
	}
	return nil
}
