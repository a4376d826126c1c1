package serverconfig

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/config"
)

var hashA = auth.HashToken("a")

func TestParse(t *testing.T) {
	t.Setenv("HEARTH_TEST_CERTS", "/etc/hearth")
	f, err := Parse([]byte(`// a team deployment
{
  listen: "0.0.0.0:8980",
  http: "",
  insecure: false,
  tls: {cert_file: "${HEARTH_TEST_CERTS}/server.pem", key_file: "${HEARTH_TEST_CERTS}/server.key", client_ca_file: "/ca.pem"},
  auth: {
    principals: [
      {name: "ci", token_sha256: "` + hashA + `", client_cert_names: ["ci.example.com"],
       grants: [{instance_prefix: "", rights: ["read", "write", "ac-write", "execute"]}]},
      {name: "dev", token_sha256: ["` + auth.HashToken("b") + `", "` + auth.HashToken("c") + `"],
       grants: [{rights: ["read"]}, {instance_prefix: "sandbox", rights: ["write", "execute"]}]},
      {name: "workers", token_sha256: "` + auth.HashToken("w") + `", grants: [{rights: ["executor"]}]},
    ],
  },
  storage: {data_dir: "/var/lib/hearth", cas_max_bytes: "2GiB"},
}`))
	if err != nil {
		t.Fatal(err)
	}
	if *f.Listen != "0.0.0.0:8980" || *f.HTTP != "" || *f.Insecure {
		t.Errorf("listen %q http %q insecure %v", *f.Listen, *f.HTTP, *f.Insecure)
	}
	if want := (&TLS{CertFile: "/etc/hearth/server.pem", KeyFile: "/etc/hearth/server.key", ClientCAFile: "/ca.pem"}); !reflect.DeepEqual(f.TLS, want) {
		t.Errorf("TLS %+v, want %+v", f.TLS, want)
	}
	if *f.Storage.DataDir != "/var/lib/hearth" || *f.Storage.CASMaxBytes != 2<<30 {
		t.Errorf("storage %q %d", *f.Storage.DataDir, *f.Storage.CASMaxBytes)
	}
	ps := f.Auth.Principals
	if len(ps) != 3 {
		t.Fatalf("%d principals", len(ps))
	}
	if ps[0].Name != "ci" || !reflect.DeepEqual(ps[0].TokenSHA256, []string{hashA}) || !reflect.DeepEqual(ps[0].ClientCertNames, []string{"ci.example.com"}) ||
		!reflect.DeepEqual(ps[0].Grants, []auth.Grant{{Rights: auth.Read | auth.Write | auth.ACWrite | auth.Execute}}) {
		t.Errorf("principal 0: %+v", ps[0])
	}
	if !reflect.DeepEqual(ps[1].Grants, []auth.Grant{{Rights: auth.Read}, {InstancePrefix: "sandbox", Rights: auth.Write | auth.Execute}}) || len(ps[1].TokenSHA256) != 2 {
		t.Errorf("principal 1: %+v", ps[1])
	}

	empty, err := Parse([]byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if empty.Listen != nil || empty.HTTP != nil || empty.TLS != nil || empty.Auth != nil || empty.Storage.DataDir != nil {
		t.Errorf("an empty file set fields: %+v", empty)
	}
}

func TestParseErrors(t *testing.T) {
	p := func(body string) string {
		return `{auth: {principals: [` + body + `]}}`
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"syntax", `{listen: }`, "JSON5 syntax error at line 1"},
		{"unknown top-level", `{listn: "x:1"}`, `listn: unknown field; did you mean "listen"?`},
		{"bad listen", `{listen: "8980"}`, `listen: "8980" is not host:port`},
		{"empty listen", `{listen: ""}`, "listen: is empty"},
		{"listen not a string", `{listen: 8980}`, "listen: want a string, got number 8980"},
		{"http_pprof not a bool", `{http_pprof: "yes"}`, "http_pprof: want"},
		{"tls unknown", `{tls: {cert_file: "c", key_file: "k", ca_file: "x"}}`, "tls.ca_file: unknown field"},
		{"tls no key", `{tls: {cert_file: "c"}}`, "tls: cert_file and key_file are both required"},
		{"storage unknown", `{storage: {data: "/x"}}`, "storage.data: unknown field"},
		{"storage bad size", `{storage: {cas_max_bytes: "lots"}}`, "storage.cas_max_bytes: invalid size"},
		{"no principals", `{auth: {}}`, "auth.principals: required"},
		{"empty principals", `{auth: {principals: []}}`, "auth.principals: is empty"},
		{"principal no name", p(`{token_sha256: "` + hashA + `", grants: [{rights: ["read"]}]}`), "auth.principals[0].name: required"},
		{"raw token", p(`{name: "a", token_sha256: "secret", grants: [{rights: ["read"]}]}`), `auth.principals[0].token_sha256[0]: "secret" is not a SHA-256 hash`},
		{"no credential", p(`{name: "a", grants: [{rights: ["read"]}]}`), "auth.principals[0]: needs token_sha256 or client_cert_names"},
		{"no grants", p(`{name: "a", token_sha256: "` + hashA + `"}`), "auth.principals[0].grants: required"},
		{"unknown right", p(`{name: "a", token_sha256: "` + hashA + `", grants: [{rights: ["admin"]}]}`), `auth.principals[0].grants[0].rights[0]: unknown right "admin"`},
		{"executor on prefix", p(`{name: "a", token_sha256: "` + hashA + `", grants: [{instance_prefix: "x", rights: ["executor"]}]}`), "auth.principals[0].grants[0].rights[0]: executor needs instance_prefix"},
		{"grant unknown field", p(`{name: "a", token_sha256: "` + hashA + `", grants: [{prefix: "x", rights: ["read"]}]}`), "auth.principals[0].grants[0].prefix: unknown field"},
		{"cert names without mTLS", p(`{name: "a", client_cert_names: ["ci"], grants: [{rights: ["read"]}]}`), "auth.principals[0].client_cert_names: needs tls.client_ca_file"},
		{"shared token", p(`{name: "a", token_sha256: "` + hashA + `", grants: [{rights: ["read"]}]}, {name: "b", token_sha256: "` + hashA + `", grants: [{rights: ["read"]}]}`), `auth.principals: principal 1 ("b"): token hash`},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
			continue
		}
		if !errors.Is(err, config.ErrInvalid) {
			t.Errorf("%s: error %v does not wrap config.ErrInvalid", tc.name, err)
		}
	}
}
