package reapi

import (
	"fmt"
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
// ByteStream resource name: reserved keywords as segments, empty segments
// (a leading, trailing or doubled slash), and "." or ".." segments. The empty
// name is the default instance. Every service checks the same rule, so an
// instance usable for the CAS and action cache is usable for ByteStream too.
func validateInstanceName(name string) error {
	if name == "" {
		return nil
	}
	for _, seg := range strings.Split(name, "/") {
		if why := instanceSegmentProblem(seg); why != "" {
			return invalidf("instance_name %q %s", name, why)
		}
	}
	return nil
}

// instanceSegmentProblem says what is wrong with one "/"-separated segment
// of an instance name, or "". Dot segments are refused because a resource
// name is a path: a proxy, a URL library or a client that normalises paths
// would turn "a/../blobs/..." into "blobs/...", another instance, so such a
// name could not keep its one meaning.
func instanceSegmentProblem(seg string) string {
	switch {
	case seg == "":
		return "has an empty path segment (leading, trailing or doubled slash)"
	case seg == "." || seg == "..":
		return fmt.Sprintf("has the path segment %q; instance name segments may not be \".\" or \"..\"", seg)
	case instanceKeywords[seg]:
		return fmt.Sprintf("contains the reserved segment %q", seg)
	}
	return ""
}
