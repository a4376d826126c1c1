package auth

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAllowedPrefixes(t *testing.T) {
	p := &Principal{Name: "p", Grants: []Grant{
		{InstancePrefix: "team", Rights: Read},
		{InstancePrefix: "team/linux", Rights: Write},
		{InstancePrefix: "", Rights: Execute},
	}}
	for _, tc := range []struct {
		right    Right
		instance string
		want     bool
	}{
		{Read, "team", true},
		{Read, "team/linux", true},
		{Read, "teamx", false},
		{Read, "", false},
		{Write, "team/linux/x", true},
		{Write, "team", false},
		{Read | Write, "team/linux", true},
		{Read | Write, "team/mac", false},
		{Execute, "anything/at/all", true},
		{Execute, "", true},
		{ACWrite, "team", false},
	} {
		if got := p.Allowed(tc.right, tc.instance); got != tc.want {
			t.Errorf("Allowed(%v, %q) = %v, want %v", tc.right, tc.instance, got, tc.want)
		}
	}
}

func TestNewRejects(t *testing.T) {
	h := HashToken("t")
	ok := func(name string) PrincipalConfig {
		return PrincipalConfig{Name: name, TokenSHA256: []string{HashToken(name)}, Grants: []Grant{{Rights: Read}}}
	}
	for _, tc := range []struct {
		name string
		ps   []PrincipalConfig
		want string
	}{
		{"empty name", []PrincipalConfig{{TokenSHA256: []string{h}, Grants: []Grant{{Rights: Read}}}}, "name is empty"},
		{"duplicate name", []PrincipalConfig{ok("a"), {Name: "a", TokenSHA256: []string{h}, Grants: []Grant{{Rights: Read}}}}, "used by another"},
		{"no credential", []PrincipalConfig{{Name: "a", Grants: []Grant{{Rights: Read}}}}, "no credential"},
		{"no grants", []PrincipalConfig{{Name: "a", TokenSHA256: []string{h}}}, "no grants"},
		{"raw token", []PrincipalConfig{{Name: "a", TokenSHA256: []string{"secret"}, Grants: []Grant{{Rights: Read}}}}, "64 lower-case hex"},
		{"upper-case hash", []PrincipalConfig{{Name: "a", TokenSHA256: []string{strings.ToUpper(h)}, Grants: []Grant{{Rights: Read}}}}, "64 lower-case hex"},
		{"shared hash", []PrincipalConfig{ok("a"), {Name: "b", TokenSHA256: []string{HashToken("a")}, Grants: []Grant{{Rights: Read}}}}, "also given to principal \"a\""},
		{"shared cert name", []PrincipalConfig{
			{Name: "a", ClientCertNames: []string{"ci"}, Grants: []Grant{{Rights: Read}}},
			{Name: "b", ClientCertNames: []string{"ci"}, Grants: []Grant{{Rights: Read}}}}, "also given to principal \"a\""},
		{"executor on a prefix", []PrincipalConfig{{Name: "a", TokenSHA256: []string{h}, Grants: []Grant{{InstancePrefix: "x", Rights: Executor}}}}, "executor right needs the empty instance prefix"},
		{"no rights", []PrincipalConfig{{Name: "a", TokenSHA256: []string{h}, Grants: []Grant{{InstancePrefix: "x"}}}}, "has no rights"},
		{"slash prefix", []PrincipalConfig{{Name: "a", TokenSHA256: []string{h}, Grants: []Grant{{InstancePrefix: "x/", Rights: Read}}}}, "slash"},
	} {
		_, err := New(Config{Principals: tc.ps})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := New(Config{Principals: []PrincipalConfig{ok("a"), ok("b")}}); err != nil {
		t.Errorf("valid policy rejected: %v", err)
	}
}

func TestParseRight(t *testing.T) {
	for _, n := range RightNames() {
		r, err := ParseRight(n)
		if err != nil || r.String() != n {
			t.Errorf("ParseRight(%q) = %v, %v", n, r, err)
		}
	}
	if _, err := ParseRight("admin"); err == nil {
		t.Error("ParseRight accepted admin")
	}
	if got := (Read | ACWrite).String(); got != "read+ac-write" {
		t.Errorf("String() = %q", got)
	}
}

func TestAuthenticateTokens(t *testing.T) {
	p, err := New(Config{Principals: []PrincipalConfig{
		{Name: "a", TokenSHA256: []string{HashToken("tok-a")}, Grants: []Grant{{Rights: Read}}},
		{Name: "b", TokenSHA256: []string{HashToken("tok-b"), HashToken("tok-b2")}, Grants: []Grant{{Rights: Read}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		authz []string
		want  string // principal name, or "" for an error
	}{
		{[]string{"Bearer tok-a"}, "a"},
		{[]string{"bearer tok-b2"}, "b"},
		{[]string{"Bearer  tok-b "}, "b"},
		{[]string{"Bearer tok-c"}, ""},
		{[]string{"tok-a"}, ""},
		{[]string{"Basic tok-a"}, ""},
		{[]string{"Bearer "}, ""},
		{[]string{"Bearer tok-a", "Bearer tok-b"}, ""},
		{nil, ""},
	} {
		pr, err := p.authenticate(tc.authz, nil)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("%q: authenticated as %q", tc.authz, pr.Name)
		case tc.want != "" && (err != nil || pr.Name != tc.want):
			t.Errorf("%q: got %v, %v; want %q", tc.authz, pr, err, tc.want)
		}
	}
}

func TestRequireHTTP(t *testing.T) {
	p, err := New(Config{Principals: []PrincipalConfig{
		{Name: "ops", TokenSHA256: []string{HashToken("ops")}, Grants: []Grant{{Rights: Read}}},
		{Name: "team", TokenSHA256: []string{HashToken("team")}, Grants: []Grant{{InstancePrefix: "team", Rights: Read}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	h := p.RequireHTTP(Read, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello " + FromContext(r.Context()).Name))
	}))
	for _, tc := range []struct {
		header string
		code   int
		body   string
	}{
		{"", http.StatusUnauthorized, "credentials required"},
		{"Bearer nope", http.StatusUnauthorized, "not known"},
		{"Bearer team", http.StatusForbidden, `lacks the "read" right`},
		{"Bearer ops", http.StatusOK, "hello ops"},
	} {
		req := httptest.NewRequest("GET", "/status", nil)
		if tc.header != "" {
			req.Header.Set("Authorization", tc.header)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.body) {
			t.Errorf("%q: %d %q, want %d with %q", tc.header, rec.Code, rec.Body.String(), tc.code, tc.body)
		}
		if tc.code == http.StatusUnauthorized && rec.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%q: 401 without a WWW-Authenticate challenge", tc.header)
		}
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		content, want string
	}{
		{"abc\n", "abc"},
		{"  abc  ", "abc"},
		{"", ""},
		{"Bearer abc", ""},
		{"a b", ""},
	} {
		path := filepath.Join(dir, "tok")
		if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadTokenFile(path)
		if (tc.want == "") != (err != nil) || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.content, got, err, tc.want)
		}
	}
	if _, err := ReadTokenFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file was accepted")
	}
}
