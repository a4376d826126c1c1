package config

import (
	"math"
	"net"
	"net/url"
	"strings"
	"time"
)

// endpoint decodes NativeLink's EndpointConfig: {uri, timeout?, tls_config?},
// plus Hearth's token_file.
func (d *decoder) endpoint(path string, v any) Endpoint {
	var e Endpoint
	o, ok := d.object(path, v)
	if !ok {
		return e
	}
	uriOK := false
	uv, up, hasURI := o.get("uri")
	lv, lp, hasList := o.get("uris")
	switch {
	case hasURI && hasList:
		d.errorf(lp, "set uri (one server) or uris (several), not both")
	case hasURI:
		if s, ok := d.str(up, uv); ok {
			e.URI, uriOK = s, d.checkEndpointURI(up, s)
		}
	case hasList:
		e.URIs, uriOK = d.endpointURIs(lp, lv)
		if len(e.URIs) > 0 {
			e.URI = e.URIs[0]
		}
	default:
		d.errorf(fieldPath(path, "uri"), "required (for example \"grpc://scheduler:50061\")")
	}
	if v, p, ok := o.get("timeout"); ok {
		// NativeLink's timeout is a float number of seconds.
		if f, ok := d.number(p, v); ok {
			if f <= 0 || f > float64(math.MaxInt64/time.Second) {
				d.errorf(p, "%v is out of range (want a positive number of seconds)", f)
			} else {
				e.Timeout = time.Duration(f * float64(time.Second))
			}
		}
	}
	if v, p, ok := o.get("tls_config"); ok {
		e.TLS = d.clientTLS(p, v)
		if uriOK && e.TLS != nil && !e.Secure() {
			d.errorf(p, "set, but the uri %q does not use TLS (use grpcs:// or https://)", e.URI)
		}
	}
	if v, p, ok := o.get("token_file"); ok {
		if s, ok := d.str(p, v); ok {
			if s == "" {
				d.errorf(p, "is empty (omit it to send no token)")
			}
			e.TokenFile = s
			for _, u := range e.Addresses() {
				if uriOK && !e.Secure() && !strings.HasPrefix(u, "unix:") && !isLoopbackURI(u) {
					d.warnf(p, "the token is sent in clear text to %s; use grpcs:// off loopback", u)
				}
			}
		}
	}
	o.rejectUnknown()
	return e
}

// endpointURIs decodes uris: one or more distinct grpc:// or grpcs:// (not
// mixed) server addresses, tried in order. One connection carries one TLS
// setting, hence no mixing; a unix socket names the one local server, so it
// is only allowed alone.
func (d *decoder) endpointURIs(path string, v any) ([]string, bool) {
	list, ok := d.strList(path, v, true)
	if !ok {
		return nil, false
	}
	if len(list) == 0 {
		d.errorf(path, "is empty (list the servers, for example [\"grpc://hearth-a:8980\", \"grpc://hearth-b:8980\"])")
		return nil, false
	}
	allOK := true
	seen := map[string]int{}
	for i, s := range list {
		p := indexPath(path, i)
		if s == "" {
			d.errorf(p, "is empty")
			allOK = false
			continue
		}
		if !d.checkEndpointURI(p, s) {
			allOK = false
			continue
		}
		if len(list) > 1 {
			u, _ := url.Parse(s)
			if u.Scheme != "grpc" && u.Scheme != "grpcs" {
				d.errorf(p, "%q: with several servers each must be grpc://host:port or grpcs://host:port", s)
				allOK = false
				continue
			}
			if u.Port() == "" {
				d.errorf(p, "%q: no port (want grpcs://host:port)", s)
				allOK = false
				continue
			}
			if (u.Scheme == "grpcs") != (strings.HasPrefix(list[0], "grpcs:")) {
				d.errorf(p, "%q: every server must use TLS (grpcs://) or none (grpc://), as %s does", s, indexPath(path, 0))
				allOK = false
				continue
			}
		}
		key := strings.ToLower(Endpoint{URI: s}.DialTarget())
		if j, dup := seen[key]; dup {
			d.errorf(p, "%q names the same server as %s", s, indexPath(path, j))
			allOK = false
			continue
		}
		seen[key] = i
	}
	return list, allOK
}

// Addresses lists the endpoint's servers in the order they are tried.
func (e Endpoint) Addresses() []string {
	if len(e.URIs) > 0 {
		return e.URIs
	}
	if e.URI == "" {
		return nil
	}
	return []string{e.URI}
}

func (d *decoder) checkEndpointURI(path, s string) bool {
	u, err := url.Parse(s)
	if err != nil {
		d.errorf(path, "invalid uri %q: %v", s, err)
		return false
	}
	bad := func(why string) bool {
		d.errorf(path, "invalid uri %q: %s", s, why)
		return false
	}
	switch u.Scheme {
	case "grpc", "http", "grpcs", "https":
		if u.Hostname() == "" {
			return bad("no host (want scheme://host:port)")
		}
		if u.Port() == "" && (u.Scheme == "grpc" || u.Scheme == "http") {
			return bad("no port (want scheme://host:port)")
		}
		if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return bad("only scheme://host:port is allowed")
		}
	case "unix":
		if u.Host != "" || u.Path == "" || u.Path[0] != '/' {
			return bad("want unix:///absolute/path")
		}
	default:
		return bad("unsupported scheme (want grpc, grpcs, http, https or unix)")
	}
	return true
}

// isLoopbackURI reports whether a host:port URI names a loopback address
// or localhost.
func isLoopbackURI(s string) bool {
	u, err := url.Parse(s)
	if err != nil {
		return false
	}
	if u.Hostname() == "localhost" {
		return true
	}
	ip := net.ParseIP(u.Hostname())
	return ip != nil && ip.IsLoopback()
}

// Secure reports whether the endpoint is reached over TLS.
func (e Endpoint) Secure() bool {
	u, err := url.Parse(e.URI)
	return err == nil && (u.Scheme == "grpcs" || u.Scheme == "https")
}

// DialTarget returns the address to give grpc.NewClient: "host:port" (port
// 443 when a TLS URI names none) or "unix:///path".
func (e Endpoint) DialTarget() string {
	u, err := url.Parse(e.URI)
	if err != nil {
		return e.URI
	}
	if u.Scheme == "unix" {
		return "unix://" + u.Path
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return u.Host
}

// clientTLS applies NativeLink's rules: a CA file unless native roots are
// used, and a client certificate only together with its key.
func (d *decoder) clientTLS(path string, v any) *ClientTLS {
	o, ok := d.object(path, v)
	if !ok {
		return nil
	}
	var t ClientTLS
	for _, f := range []struct {
		key string
		dst *string
	}{{"ca_file", &t.CAFile}, {"cert_file", &t.CertFile}, {"key_file", &t.KeyFile}} {
		if v, p, ok := o.get(f.key); ok {
			*f.dst, _ = d.str(p, v)
		}
	}
	if v, p, ok := o.get("use_native_roots"); ok {
		t.UseNativeRoots, _ = d.boolean(p, v)
	}
	o.rejectUnknown()
	switch {
	case t.UseNativeRoots && t.CAFile != "":
		d.warnf(fieldPath(path, "ca_file"), "ignored because use_native_roots is true")
		t.CAFile = ""
	case !t.UseNativeRoots && t.CAFile == "":
		d.errorf(fieldPath(path, "ca_file"), "required unless use_native_roots is true")
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		d.errorf(path, "cert_file and key_file must be given together")
	}
	return &t
}

// uploadActionResult decodes NativeLink's UploadActionResultConfig.
func (d *decoder) uploadActionResult(path string, v any) UploadActionResult {
	var u UploadActionResult
	o, ok := d.object(path, v)
	if !ok {
		return u
	}
	if v, p, ok := o.get("upload_ac_results_strategy"); ok {
		i, _ := d.enum(p, v, uploadStrategyNames)
		u.UploadACResultsStrategy = UploadStrategy(i)
	}
	for _, f := range []struct {
		key string
		dst *MessageTemplate
	}{{"success_message_template", &u.SuccessMessageTemplate}, {"failure_message_template", &u.FailureMessageTemplate}} {
		v, p, ok := o.get(f.key)
		if !ok {
			continue
		}
		s, ok := d.str(p, v)
		if !ok {
			continue
		}
		t, err := parseTemplate(s)
		if err != nil {
			d.errorf(p, "%v", err)
			continue
		}
		if t.usesHistorical() {
			d.warnf(p, "Hearth does not upload historical results: {historical_results_hash} and {historical_results_size} expand to empty text")
		}
		*f.dst = t
	}
	if v, p, ok := o.get("ac_store"); ok {
		if _, ok := d.str(p, v); ok {
			d.warnf(p, "ignored: Hearth writes action results to the action cache of the worker_api_endpoint server")
		}
	}
	if v, p, ok := o.get("historical_results_store"); ok {
		if _, ok := d.str(p, v); ok {
			d.warnf(p, "ignored: Hearth does not upload historical results")
		}
	}
	if v, p, ok := o.get("upload_historical_results_strategy"); ok {
		if _, ok := d.enum(p, v, uploadStrategyNames); ok {
			d.warnf(p, "ignored: Hearth does not upload historical results")
		}
	}
	o.rejectUnknown()
	return u
}

// directoryCache decodes NativeLink's DirectoryCacheConfig. Its presence
// enables the cache.
func (d *decoder) directoryCache(path string, v any) *DirectoryCache {
	c := &DirectoryCache{MaxEntries: DefaultDirectoryCacheMaxEntries, MaxSizeBytes: DefaultDirectoryCacheMaxSizeBytes}
	o, ok := d.object(path, v)
	if !ok {
		return c
	}
	if v, p, ok := o.get("max_entries"); ok {
		n, _ := d.integer(p, v, 1, math.MaxInt32)
		c.MaxEntries = int(n)
	}
	if v, p, ok := o.get("max_size_bytes"); ok {
		c.MaxSizeBytes, _ = d.size(p, v)
	}
	if v, p, ok := o.get("cache_root"); ok {
		if s, ok := d.str(p, v); ok {
			if s == "" {
				d.errorf(p, "must not be empty (omit it for the default)")
			}
			c.CacheRoot = s
		}
	}
	for _, key := range []string{"experimental_subtree_caching", "experimental_get_tree_prefetch"} {
		if v, p, ok := o.get(key); ok {
			if _, ok := d.boolean(p, v); ok {
				d.warnf(p, "ignored: not implemented by Hearth")
			}
		}
	}
	if v, p, ok := o.get("max_concurrent_fetches"); ok {
		if _, ok := d.integer(p, v, 1, math.MaxInt32); ok {
			d.warnf(p, "ignored: not implemented by Hearth")
		}
	}
	o.rejectUnknown()
	return c
}

// persistentWorkers decodes Hearth's persistent_workers section over the
// defaults already in pw.
func (d *decoder) persistentWorkers(path string, v any, pw *PersistentWorkers) {
	o, ok := d.object(path, v)
	if !ok {
		return
	}
	if v, p, ok := o.get("enabled"); ok {
		pw.Enabled, _ = d.boolean(p, v)
	}
	intField := func(key string, dst *int) {
		if v, p, ok := o.get(key); ok {
			n, _ := d.integer(p, v, 0, math.MaxInt32)
			*dst = int(n)
		}
	}
	intField("max_workers_per_pool", &pw.MaxWorkersPerPool)
	intField("max_invocations", &pw.MaxInvocations)
	intField("prewarm", &pw.Prewarm)
	if v, p, ok := o.get("idle_timeout_s"); ok {
		pw.IdleTimeout, _ = d.seconds(p, v)
	}
	if v, p, ok := o.get("memory_limit_bytes"); ok {
		pw.MemoryLimitBytes, _ = d.size(p, v)
	}
	if v, p, ok := o.get("max_total_memory_bytes"); ok {
		pw.MaxTotalMemoryBytes, _ = d.size(p, v)
	}
	if v, p, ok := o.get("protocols"); ok {
		pw.Protocols = d.protocols(p, v)
	}
	if v, p, ok := o.get("sandbox"); ok {
		i, _ := d.enum(p, v, sandboxNames)
		pw.Sandbox = SandboxKind(i)
	}
	if v, p, ok := o.get("verify_fraction"); ok {
		if f, ok := d.number(p, v); ok {
			if f < 0 || f > 1 {
				d.errorf(p, "%v is out of range (want 0 to 1)", f)
			} else {
				pw.VerifyFraction = f
			}
		}
	}
	o.rejectUnknown()
	if pw.MemoryLimitBytes > 0 && pw.MaxTotalMemoryBytes > 0 && pw.MemoryLimitBytes > pw.MaxTotalMemoryBytes {
		d.errorf(fieldPath(path, "memory_limit_bytes"), "%d is larger than max_total_memory_bytes (%d)", pw.MemoryLimitBytes, pw.MaxTotalMemoryBytes)
	}
	if pw.MaxWorkersPerPool > 0 && pw.Prewarm > pw.MaxWorkersPerPool {
		d.errorf(fieldPath(path, "prewarm"), "%d is larger than max_workers_per_pool (%d)", pw.Prewarm, pw.MaxWorkersPerPool)
	}
}

func (d *decoder) protocols(path string, v any) []WorkerProtocol {
	items, ok := v.([]any)
	if !ok {
		d.errorf(path, "want an array of protocol names (proto, json), got %s", describe(v))
		return nil
	}
	if len(items) == 0 {
		d.errorf(path, "must list at least one protocol (set enabled: false to turn persistent workers off)")
		return nil
	}
	var out []WorkerProtocol
	for i, item := range items {
		n, ok := d.enum(indexPath(path, i), item, protocolNames)
		if !ok {
			continue
		}
		p := WorkerProtocol(n)
		for _, q := range out {
			if q == p {
				d.errorf(indexPath(path, i), "%q is listed twice", p.String())
				ok = false
			}
		}
		if ok {
			out = append(out, p)
		}
	}
	return out
}
