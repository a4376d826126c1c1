package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// ErrUnauthenticated is wrapped by every error that means "no valid
// credential": gRPC callers get UNAUTHENTICATED, HTTP callers 401.
var ErrUnauthenticated = errors.New("unauthenticated")

// PrincipalConfig is one principal of the server configuration: its
// credentials and its grants.
type PrincipalConfig struct {
	Name string
	// TokenSHA256 are the lower-case hex SHA-256 hashes of the bearer
	// tokens that authenticate this principal (HashToken).
	TokenSHA256 []string
	// ClientCertNames are names of verified TLS client certificates that
	// authenticate this principal: the subject common name or a DNS or URI
	// subject alternative name.
	ClientCertNames []string
	Grants          []Grant
}

// Config is what New builds a Policy from.
type Config struct {
	Principals []PrincipalConfig
	// OperationInstance returns the instance of a running or recent
	// operation, so that WaitExecution and the Operations service are
	// checked against the instance the operation was started on. Nil, or
	// an unknown name: any execute grant suffices (the handler then answers
	// NOT_FOUND for a name it does not know).
	OperationInstance func(name string) (instance string, ok bool)
}

// Policy authenticates callers and checks their rights. It is immutable
// and safe for concurrent use.
type Policy struct {
	tokens     []tokenEntry
	certs      map[string]*Principal
	opInstance func(string) (string, bool)
}

type tokenEntry struct {
	hash      [sha256.Size]byte
	principal *Principal
}

// New validates cfg and returns its policy. Every problem is reported with
// the principal's index and name.
func New(cfg Config) (*Policy, error) {
	p := &Policy{certs: map[string]*Principal{}, opInstance: cfg.OperationInstance}
	var errs []error
	names := map[string]bool{}
	hashes := map[string]string{}
	for i, pc := range cfg.Principals {
		fail := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("principal %d (%q): %s", i, pc.Name, fmt.Sprintf(format, args...)))
		}
		switch {
		case pc.Name == "":
			fail("name is empty")
		case names[pc.Name]:
			fail("name is used by another principal")
		}
		names[pc.Name] = true
		if len(pc.TokenSHA256) == 0 && len(pc.ClientCertNames) == 0 {
			fail("has no credential (give a token hash or a client certificate name)")
		}
		if len(pc.Grants) == 0 {
			fail("has no grants")
		}
		for _, g := range pc.Grants {
			if g.Rights == 0 {
				fail("a grant for instance prefix %q has no rights", g.InstancePrefix)
			}
			if g.Rights&Executor != 0 && g.InstancePrefix != "" {
				// The scheduler hands any instance's actions to any
				// executor; a prefix would promise a partition it does
				// not make.
				fail("the executor right needs the empty instance prefix (an executor serves every instance), got %q", g.InstancePrefix)
			}
			if strings.HasPrefix(g.InstancePrefix, "/") || strings.HasSuffix(g.InstancePrefix, "/") {
				fail("instance prefix %q must not start or end with a slash", g.InstancePrefix)
			}
		}
		principal := &Principal{Name: pc.Name, Grants: pc.Grants}
		for _, h := range pc.TokenSHA256 {
			raw, err := hex.DecodeString(h)
			if err != nil || len(raw) != sha256.Size || strings.ToLower(h) != h {
				fail("token hash %q is not 64 lower-case hex digits (hash a token with `hearth token hash` or sha256sum)", h)
				continue
			}
			if other, dup := hashes[h]; dup {
				fail("token hash %s is also given to principal %q", h, other)
				continue
			}
			hashes[h] = pc.Name
			e := tokenEntry{principal: principal}
			copy(e.hash[:], raw)
			p.tokens = append(p.tokens, e)
		}
		for _, n := range pc.ClientCertNames {
			if n == "" {
				fail("empty client certificate name")
				continue
			}
			if other, dup := p.certs[n]; dup {
				fail("client certificate name %q is also given to principal %q", n, other.Name)
				continue
			}
			p.certs[n] = principal
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// HashToken returns the lower-case hex SHA-256 of token, the form the server
// configuration stores.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// authenticate finds the principal of a call from its authorization
// values (header or metadata) and the verified chains of its TLS
// connection. A bearer token, when given, decides alone: a wrong token is
// an error even on a connection with a valid client certificate, so that a
// misconfigured client notices.
func (p *Policy) authenticate(authorization []string, verified [][]*x509.Certificate) (*Principal, error) {
	switch len(authorization) {
	case 0:
	case 1:
		scheme, token, ok := strings.Cut(strings.TrimSpace(authorization[0]), " ")
		token = strings.TrimSpace(token)
		if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			return nil, fmt.Errorf("%w: the authorization value is not \"Bearer <token>\"", ErrUnauthenticated)
		}
		if pr := p.lookupToken(token); pr != nil {
			return pr, nil
		}
		return nil, fmt.Errorf("%w: the bearer token is not known to this server", ErrUnauthenticated)
	default:
		return nil, fmt.Errorf("%w: %d authorization values given, want one", ErrUnauthenticated, len(authorization))
	}
	if len(verified) > 0 && len(verified[0]) > 0 {
		leaf := verified[0][0]
		for _, n := range certNames(leaf) {
			if pr := p.certs[n]; pr != nil {
				return pr, nil
			}
		}
		return nil, fmt.Errorf("%w: the client certificate (subject %q) is not mapped to any principal", ErrUnauthenticated, leaf.Subject.String())
	}
	return nil, fmt.Errorf("%w: credentials required: send the metadata \"authorization: Bearer <token>\" (Bazel: --remote_header=authorization=\"Bearer <token>\") or a client certificate", ErrUnauthenticated)
}

// lookupToken compares the token's hash with every known hash, without
// stopping at a match, so the time taken does not tell which (or whether
// one) matched.
func (p *Policy) lookupToken(token string) *Principal {
	sum := sha256.Sum256([]byte(token))
	var found *Principal
	for i := range p.tokens {
		if subtle.ConstantTimeCompare(sum[:], p.tokens[i].hash[:]) == 1 {
			found = p.tokens[i].principal
		}
	}
	return found
}

// certNames are the names a client certificate can be mapped by.
func certNames(c *x509.Certificate) []string {
	var names []string
	if c.Subject.CommonName != "" {
		names = append(names, c.Subject.CommonName)
	}
	names = append(names, c.DNSNames...)
	for _, u := range c.URIs {
		names = append(names, u.String())
	}
	return names
}

type principalKey struct{}

// FromContext returns the principal an interceptor or RequireHTTP
// authenticated for this call, or nil (no policy in force). It is for
// logging and display; access decisions are the interceptors' alone.
func FromContext(ctx context.Context) *Principal {
	pr, _ := ctx.Value(principalKey{}).(*Principal)
	return pr
}

func withPrincipal(ctx context.Context, pr *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, pr)
}
