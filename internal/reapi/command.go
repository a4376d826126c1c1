package reapi

import (
	"fmt"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/outputs"
)

// validateCommand checks what an executor relies on: something to run, a
// well-formed environment, and output paths and a working directory that stay
// inside the action's directory.
func validateCommand(cmd *repb.Command) error {
	if len(cmd.GetArguments()) == 0 || cmd.GetArguments()[0] == "" {
		return fmt.Errorf("arguments is empty: there is nothing to run")
	}
	seen := map[string]bool{}
	for _, ev := range cmd.GetEnvironmentVariables() {
		name := ev.GetName()
		if name == "" || strings.ContainsAny(name, "=\x00") || strings.ContainsRune(ev.GetValue(), 0) {
			return fmt.Errorf("environment variable %q is not a valid name=value pair", name)
		}
		if seen[name] {
			return fmt.Errorf("environment variable %q is set twice", name)
		}
		seen[name] = true
	}
	// Output paths and the working directory must stay inside the action.
	if err := outputs.Validate(cmd); err != nil {
		return err
	}
	return validatePlatform(cmd.GetPlatform())
}

func validatePlatform(p *repb.Platform) error {
	for _, prop := range p.GetProperties() {
		if prop.GetName() == "" {
			return fmt.Errorf("a platform property has an empty name")
		}
	}
	return nil
}
