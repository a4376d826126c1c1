package auth

import (
	"crypto/x509"
	"fmt"
	"net/http"
)

// AuthenticateHTTP returns the principal of an HTTP request: its
// "Authorization: Bearer <token>" header, else its verified TLS client
// certificate. The error wraps ErrUnauthenticated.
func (p *Policy) AuthenticateHTTP(r *http.Request) (*Principal, error) {
	var verified [][]*x509.Certificate
	if r.TLS != nil {
		verified = r.TLS.VerifiedChains
	}
	return p.authenticate(r.Header.Values("Authorization"), verified)
}

// RequireHTTP wraps an HTTP handler so that it only serves requests of an
// authenticated principal holding right on instance ("" for the empty
// instance, which a grant with the empty prefix covers). A request without
// a valid credential gets 401 with a WWW-Authenticate challenge, one
// lacking the right 403. The handler finds the principal with FromContext.
// right 0 means "any authenticated principal".
func (p *Policy) RequireHTTP(right Right, instance string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr, err := p.AuthenticateHTTP(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hearth"`)
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		if right != 0 && !pr.Allowed(right, instance) {
			http.Error(w, fmt.Sprintf("principal %q lacks the %q right on instance %q", pr.Name, right.String(), instance), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r.WithContext(withPrincipal(r.Context(), pr)))
	})
}
