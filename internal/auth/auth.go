// Package auth owns access control of Hearth's APIs: it turns the
// credentials a caller presents (a bearer token in the "authorization"
// metadata, or the verified TLS client certificate of the connection) into a
// Principal, and decides whether that principal holds the right an RPC needs
// on the instance the RPC names.
//
// The decision is made once, at the server root, by the interceptors of
// Policy (UnaryInterceptor, StreamInterceptor): handlers never look at
// credentials. Each RPC's right comes from one table (methods.go); a method
// the table does not know is refused when a policy is in force, so a newly
// registered service cannot become reachable by accident. The HTTP port uses
// the same principals through Policy.AuthenticateHTTP and RequireHTTP.
//
// Tokens are stored as SHA-256 hashes only and compared in constant time.
package auth

import (
	"fmt"
	"slices"
	"strings"
)

// Right is one kind of access, or a set of them (a bit mask).
type Right uint8

// The rights, as named in the server configuration file.
const (
	// Read: CAS and action-cache reads, GetCapabilities.
	Read Right = 1 << iota
	// Write: CAS writes (BatchUpdateBlobs, ByteStream.Write).
	Write
	// ACWrite: UpdateActionResult.
	ACWrite
	// Execute: Execute, WaitExecution and the Operations service.
	Execute
	// Executor: the worker API (serving other people's actions). It
	// includes Read, Write and ACWrite on every instance: an executor
	// fetches any instance's inputs and stores the results it produces.
	Executor
)

// executorImplies are the rights an executor needs to do its work.
const executorImplies = Read | Write | ACWrite

// rightNames are in bit order.
var rightNames = []string{"read", "write", "ac-write", "execute", "executor"}

// RightNames lists the names ParseRight accepts.
func RightNames() []string { return slices.Clone(rightNames) }

// ParseRight maps a configuration name ("read", "ac-write", ...) to its Right.
func ParseRight(name string) (Right, error) {
	i := slices.Index(rightNames, name)
	if i < 0 {
		return 0, fmt.Errorf("unknown right %q (want one of %s)", name, strings.Join(rightNames, ", "))
	}
	return Right(1) << i, nil
}

func (r Right) String() string {
	var names []string
	for i, n := range rightNames {
		if r&(Right(1)<<i) != 0 {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "+")
}

// Grant gives rights on every instance whose name starts with
// InstancePrefix, segment by segment: the prefix "team-a" covers "team-a"
// and "team-a/linux" but not "team-ab". The empty prefix covers every
// instance, the default (empty) instance included.
type Grant struct {
	InstancePrefix string
	Rights         Right
}

// effective are the grant's rights with those Executor implies.
func (g Grant) effective() Right {
	if g.Rights&Executor != 0 {
		return g.Rights | executorImplies
	}
	return g.Rights
}

// covers reports whether the grant's prefix covers instance.
func (g Grant) covers(instance string) bool {
	p := g.InstancePrefix
	return p == "" || instance == p || strings.HasPrefix(instance, p+"/")
}

// Principal is an authenticated caller with its grants.
type Principal struct {
	// Name identifies the principal in errors and logs; it is never a secret.
	Name   string
	Grants []Grant
}

// Allowed reports whether p holds right r on instance.
func (p *Principal) Allowed(r Right, instance string) bool {
	var have Right
	for _, g := range p.Grants {
		if g.covers(instance) {
			have |= g.effective()
		}
	}
	return have&r == r
}

// allowedSomewhere reports whether p holds r on at least one instance: the
// check for calls whose instance is unknown (an operation name the
// scheduler no longer knows, which the handler then reports as NOT_FOUND).
func (p *Principal) allowedSomewhere(r Right) bool {
	for _, g := range p.Grants {
		if g.effective()&r == r {
			return true
		}
	}
	return false
}
