// Package serverconfig owns the configuration file of `hearth serve` and
// `hearth server` (--config-server FILE): listen addresses, TLS, access
// control (principals with their credentials and grants), storage paths
// and bounds. It is JSON5 read with internal/config's parser, so it has the
// worker file's rules: unknown fields are errors naming their path, null
// means absent, strings expand ${VAR}.
//
// Every field is optional; a field set in the file is reported as set (a
// non-nil pointer) so that the command line can override it field by field.
// The README's configuration reference documents every field.
package serverconfig

import (
	"fmt"
	"maps"
	"math"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/config"
)

// File is a parsed server configuration.
type File struct {
	// Listen is the gRPC address.
	Listen *string
	// HTTP is the HTTP address; "" disables it.
	HTTP *string
	// HTTPPprof serves Go's runtime profiles on the HTTP port.
	HTTPPprof *bool
	// Insecure allows plaintext gRPC on a non-loopback address.
	Insecure *bool
	// TLS, when set, serves gRPC over TLS.
	TLS *TLS
	// Auth, when set, requires credentials on every API.
	Auth    *Auth
	Storage Storage
	// ActionCache, when set, moves the action cache off local disk.
	ActionCache *ActionCache
	// Scheduler, when set, shares operations and queues with other replicas.
	Scheduler *Scheduler
	// Stores, when set, puts the CAS on a fast/slow pair (stores.go).
	Stores *Stores
	// Warnings are for the caller to log.
	Warnings []string
}

// TLS names the listener's PEM files.
type TLS struct {
	CertFile, KeyFile string
	// ClientCAFile turns on mTLS: clients must present a certificate it
	// signed.
	ClientCAFile string
}

// Auth is the access policy.
type Auth struct {
	Principals []auth.PrincipalConfig
}

// Storage is where and how much the server stores.
type Storage struct {
	// DataDir holds the CAS, the action cache and executor scratch space.
	DataDir *string
	// CASMaxBytes bounds the CAS (LRU eviction beyond it); 0 = unbounded.
	CASMaxBytes *int64
}

// Load reads and parses the file at path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading server config: %w", err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// notYet are top-level sections a reader might expect (NativeLink's names)
// that Hearth does not implement yet; they are errors with a reason rather
// than settings silently ignored.
var notYet = map[string]string{
	"schedulers": "not supported: the scheduler is built in and needs no configuration",
	"servers":    "Hearth's listeners are configured with listen, http and tls",
}

// Parse parses a JSON5 server configuration.
func Parse(data []byte) (*File, error) {
	root, err := config.DecodeJSON5(data)
	if err != nil {
		return nil, err
	}
	d := config.NewDecoder()
	o, ok := d.Object("", root)
	if !ok {
		return nil, d.Err()
	}
	f := &File{}
	if v, p, ok := o.Get("listen"); ok {
		f.Listen = address(d, p, v, false)
	}
	if v, p, ok := o.Get("http"); ok {
		f.HTTP = address(d, p, v, true)
	}
	if v, p, ok := o.Get("http_pprof"); ok {
		if b, ok := d.Bool(p, v); ok {
			f.HTTPPprof = &b
		}
	}
	if v, p, ok := o.Get("insecure"); ok {
		if b, ok := d.Bool(p, v); ok {
			f.Insecure = &b
		}
	}
	if v, p, ok := o.Get("tls"); ok {
		f.TLS = decodeTLS(d, p, v)
	}
	if v, p, ok := o.Get("auth"); ok {
		f.Auth = decodeAuth(d, p, v)
	}
	if v, p, ok := o.Get("storage"); ok {
		f.Storage = decodeStorage(d, p, v)
	}
	if v, p, ok := o.Get("action_cache"); ok {
		f.ActionCache = decodeActionCache(d, p, v)
	}
	if v, p, ok := o.Get("scheduler"); ok {
		f.Scheduler = decodeScheduler(d, p, v)
	}
	if v, p, ok := o.Get("stores"); ok {
		f.Stores = decodeStores(d, p, v)
		if f.Stores != nil && f.Stores.CAS != nil && f.Storage.CASMaxBytes != nil {
			d.Errorf("storage.cas_max_bytes", "conflicts with stores.cas: bound the local tier with stores.cas.fast_slow.fast.filesystem.max_bytes")
		}
	}
	for _, key := range slices.Sorted(maps.Keys(notYet)) {
		if o.Has(key) {
			o.Get(key)
			d.Errorf(config.FieldPath("", key), "%s", notYet[key])
		}
	}
	o.RejectUnknown()
	if f.Auth != nil {
		for i, pc := range f.Auth.Principals {
			if len(pc.ClientCertNames) > 0 && (f.TLS == nil || f.TLS.ClientCAFile == "") {
				d.Errorf(config.FieldPath(config.IndexPath("auth.principals", i), "client_cert_names"),
					"needs tls.client_ca_file: client certificates are only asked for and verified with mTLS")
			}
		}
	}
	if err := d.Err(); err != nil {
		return nil, err
	}
	if f.Auth != nil {
		// What only the whole policy can tell (a token or certificate
		// name given to two principals).
		if _, err := auth.New(auth.Config{Principals: f.Auth.Principals}); err != nil {
			return nil, &config.FieldError{Path: "auth.principals", Msg: err.Error()}
		}
	}
	f.Warnings = d.Warnings()
	return f, nil
}

// address decodes "host:port"; emptyOK allows "" (a disabled listener).
func address(d *config.Decoder, path string, v any, emptyOK bool) *string {
	s, ok := d.String(path, v)
	if !ok || !checkAddress(d, path, s, emptyOK) {
		return nil
	}
	return &s
}

func checkAddress(d *config.Decoder, path, s string, emptyOK bool) bool {
	if s == "" {
		if !emptyOK {
			d.Errorf(path, "is empty (want host:port, e.g. \"0.0.0.0:8980\")")
		}
		return emptyOK
	}
	if _, port, err := net.SplitHostPort(s); err != nil || port == "" {
		d.Errorf(path, "%q is not host:port (e.g. \"0.0.0.0:8980\", \"[::]:8980\")", s)
		return false
	}
	return true
}

func decodeTLS(d *config.Decoder, path string, v any) *TLS {
	o, ok := d.Object(path, v)
	if !ok {
		return nil
	}
	t := &TLS{}
	for _, f := range []struct {
		key string
		dst *string
	}{{"cert_file", &t.CertFile}, {"key_file", &t.KeyFile}, {"client_ca_file", &t.ClientCAFile}} {
		if v, p, ok := o.Get(f.key); ok {
			*f.dst, _ = d.String(p, v)
		}
	}
	o.RejectUnknown()
	if t.CertFile == "" || t.KeyFile == "" {
		d.Errorf(path, "cert_file and key_file are both required")
	}
	return t
}

func decodeAuth(d *config.Decoder, path string, v any) *Auth {
	o, ok := d.Object(path, v)
	if !ok {
		return nil
	}
	a := &Auth{}
	pp := config.FieldPath(path, "principals")
	if v, p, ok := o.Get("principals"); ok {
		items, isList := v.([]any)
		switch {
		case !isList:
			d.Errorf(p, "want an array of principals")
		case len(items) == 0:
			d.Errorf(p, "is empty: list at least one principal, or leave auth out to allow everyone")
		}
		for i, item := range items {
			a.Principals = append(a.Principals, decodePrincipal(d, config.IndexPath(p, i), item))
		}
	} else {
		d.Errorf(pp, "required: the principals allowed in, e.g. [{name: \"ci\", token_sha256: \"…\", grants: [{rights: [\"read\"]}]}]")
	}
	o.RejectUnknown()
	return a
}

func decodePrincipal(d *config.Decoder, path string, v any) auth.PrincipalConfig {
	var pc auth.PrincipalConfig
	o, ok := d.Object(path, v)
	if !ok {
		return pc
	}
	if v, p, ok := o.Get("name"); ok {
		pc.Name, _ = d.String(p, v)
	} else {
		d.Errorf(config.FieldPath(path, "name"), "required: a name for logs and errors")
	}
	if v, p, ok := o.Get("token_sha256"); ok {
		if s, isString := v.(string); isString {
			v = []any{s}
		}
		hashes, _ := d.Strings(p, v)
		for i, h := range hashes {
			if !isSHA256Hex(h) {
				d.Errorf(config.IndexPath(p, i), "%q is not a SHA-256 hash (64 lower-case hex digits); store `hearth token hash` of the token, never the token", h)
			}
		}
		pc.TokenSHA256 = hashes
	}
	if v, p, ok := o.Get("client_cert_names"); ok {
		pc.ClientCertNames, _ = d.Strings(p, v)
	}
	if len(pc.TokenSHA256) == 0 && len(pc.ClientCertNames) == 0 {
		d.Errorf(path, "needs token_sha256 or client_cert_names")
	}
	if v, p, ok := o.Get("grants"); ok {
		items, isList := v.([]any)
		if !isList || len(items) == 0 {
			d.Errorf(p, "want a non-empty array of grants such as {instance_prefix: \"\", rights: [\"read\"]}")
		}
		for i, item := range items {
			if g, ok := decodeGrant(d, config.IndexPath(p, i), item); ok {
				pc.Grants = append(pc.Grants, g)
			}
		}
	} else {
		d.Errorf(config.FieldPath(path, "grants"), "required: what the principal may do, e.g. [{rights: [\"read\"]}]")
	}
	o.RejectUnknown()
	return pc
}

func decodeGrant(d *config.Decoder, path string, v any) (auth.Grant, bool) {
	var g auth.Grant
	o, ok := d.Object(path, v)
	if !ok {
		return g, false
	}
	good := true
	if v, p, ok := o.Get("instance_prefix"); ok {
		g.InstancePrefix, _ = d.String(p, v)
		if strings.HasPrefix(g.InstancePrefix, "/") || strings.HasSuffix(g.InstancePrefix, "/") {
			d.Errorf(p, "%q must not start or end with a slash", g.InstancePrefix)
			good = false
		}
	}
	if v, p, ok := o.Get("rights"); ok {
		names, _ := d.Strings(p, v)
		if len(names) == 0 {
			d.Errorf(p, "is empty (want some of %s)", strings.Join(auth.RightNames(), ", "))
			good = false
		}
		for i, n := range names {
			r, err := auth.ParseRight(n)
			if err != nil {
				d.Errorf(config.IndexPath(p, i), "%v", err)
				good = false
				continue
			}
			if r == auth.Executor && g.InstancePrefix != "" {
				d.Errorf(config.IndexPath(p, i), "executor needs instance_prefix \"\": an executor serves every instance")
				good = false
			}
			g.Rights |= r
		}
	} else {
		d.Errorf(config.FieldPath(path, "rights"), "required (some of %s)", strings.Join(auth.RightNames(), ", "))
		good = false
	}
	o.RejectUnknown()
	return g, good
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func decodeStorage(d *config.Decoder, path string, v any) Storage {
	var s Storage
	o, ok := d.Object(path, v)
	if !ok {
		return s
	}
	if v, p, ok := o.Get("data_dir"); ok {
		if dir, ok := d.String(p, v); ok {
			if dir == "" {
				d.Errorf(p, "is empty")
			}
			s.DataDir = &dir
		}
	}
	if v, p, ok := o.Get("cas_max_bytes"); ok {
		if n, ok := d.Size(p, v); ok {
			if n > math.MaxInt64 {
				d.Errorf(p, "is too large")
			} else {
				m := int64(n)
				s.CASMaxBytes = &m
			}
		}
	}
	o.RejectUnknown()
	return s
}
