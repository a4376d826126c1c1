package reapi

import (
	"strings"
)

// instanceKeywords are the words REAPI reserves in resource names; an instance
// name segment may not equal any of them, so that a ByteStream resource name
// built from any instance name Hearth accepts parses back unambiguously.
var instanceKeywords = map[string]bool{
	"blobs": true, "uploads": true, "actions": true, "actionResults": true,
	"operations": true, "capabilities": true, "compressed-blobs": true,
}

// validateInstanceName rejects instance names that could not appear in a
// ByteStream resource name: reserved keywords as segments, and empty segments
// (a leading, trailing or doubled slash). The empty name is the default
// instance. Every service checks the same rule, so an instance usable for the
// CAS and action cache is usable for ByteStream too.
func validateInstanceName(name string) error {
	if name == "" {
		return nil
	}
	for _, seg := range strings.Split(name, "/") {
		switch {
		case seg == "":
			return invalidf("instance_name %q has an empty path segment (leading, trailing or doubled slash)", name)
		case instanceKeywords[seg]:
			return invalidf("instance_name %q contains the reserved segment %q", name, seg)
		}
	}
	return nil
}
