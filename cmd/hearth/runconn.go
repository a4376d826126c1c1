package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"

	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/rpcretry"
)

// connFlags are one service's connection flags of buildbox's runner command
// line (buildbox-common's connection options), which buildbox-worker passes
// to its runner: prefix "" for the CAS (--remote), "ra-" for the Remote
// Asset service. Values are kept as given and checked by settings, so that
// every error names its flag. Each is honoured or refused: see settings.
type connFlags struct {
	prefix                            string
	remote, instance                  string // only for "ra-": the CAS's are runFlags'
	serverCert, clientKey, clientCert string
	accessToken, tokenReload          string
	googleAPIAuth                     bool
	credentialHelper                  string
	retryLimit, retryDelay            string
	retryOnCode                       listFlag
	requestTimeout, minThroughput     string
	keepaliveTime, lbPolicy, protocol string
}

// listFlag is a repeatable, comma-separated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func (c *connFlags) register(fs *flag.FlagSet, prefix, what string) {
	// Defaults are buildbox's but for retries, which hearth run leaves off
	// unless asked (buildbox-worker asks: --retry-limit=4).
	c.prefix = prefix
	p := func(name string) string { return prefix + name }
	if prefix != "" {
		fs.StringVar(&c.remote, p("remote"), "", "URL of the "+what+" (refused: hearth run uses no "+what+")")
		fs.StringVar(&c.instance, p("instance"), "", "instance name of the "+what)
	}
	fs.StringVar(&c.serverCert, p("server-cert"), "", "PEM CA(s) or certificate to verify the "+what+" with (buildbox's spelling of --tls-ca)")
	fs.StringVar(&c.clientKey, p("client-key"), "", "PEM client key for the "+what+" (buildbox's spelling of --tls-key)")
	fs.StringVar(&c.clientCert, p("client-cert"), "", "PEM client certificate for the "+what+" (buildbox's spelling of --tls-cert)")
	fs.StringVar(&c.accessToken, p("access-token"), "", "file holding a bearer token for the "+what+" (buildbox's spelling of --token-file)")
	fs.StringVar(&c.tokenReload, p("token-reload-interval"), "", "re-read the token file when this long has passed since the last read: N minutes, NM or NH")
	fs.BoolVar(&c.googleAPIAuth, p("googleapi-auth"), false, "refused: hearth run has no Google credentials")
	fs.StringVar(&c.credentialHelper, p("credential-helper"), "", "refused: hearth run runs no credential helper")
	fs.StringVar(&c.retryLimit, p("retry-limit"), "0", "retry a failed call up to this many times")
	fs.StringVar(&c.retryDelay, p("retry-delay"), "100", "milliseconds before the first retry; each next waits 1.6 times longer")
	fs.Var(&c.retryOnCode, p("retry-on-code"), "gRPC status code(s) to retry on instead of UNAVAILABLE (repeatable, comma-separated)")
	fs.StringVar(&c.requestTimeout, p("request-timeout"), "0", "seconds each attempt of a call may take (0: no limit)")
	fs.StringVar(&c.minThroughput, p("min-throughput"), "0", "refused unless 0: hearth run does not stretch deadlines by size")
	fs.StringVar(&c.keepaliveTime, p("keepalive-time"), "", "seconds between keepalive pings (0: none; at least 10; default 30)")
	fs.StringVar(&c.lbPolicy, p("load-balancing-policy"), "", "pick_first (gRPC's default) or round_robin over the resolved addresses")
	fs.StringVar(&c.protocol, p("protocol"), "", "grpc (the only protocol hearth run speaks)")
}

// connSettings are connFlags checked and converted.
type connSettings struct {
	policy        rpcretry.Policy
	keepalive     *keepalive.ClientParameters // nil: casclient's default
	serviceConfig string                      // "" keeps gRPC's default
	tokenReload   time.Duration
}

// settings checks the flags: each is turned into a setting or refused with
// an error naming it.
func (c *connFlags) settings() (connSettings, error) {
	var s connSettings
	name := func(n string) string { return "--" + c.prefix + n }
	if c.prefix != "" && c.remote != "" {
		return s, fmt.Errorf("%s=%s: hearth run does not use a Remote Asset service; leave it unset", name("remote"), c.remote)
	}
	if c.googleAPIAuth {
		return s, fmt.Errorf("%s: hearth run has no Google credentials; use --access-token (--token-file)", name("googleapi-auth"))
	}
	if c.credentialHelper != "" {
		return s, fmt.Errorf("%s=%s: hearth run runs no credential helper; use --access-token (--token-file)", name("credential-helper"), c.credentialHelper)
	}
	n, err := strconv.Atoi(c.retryLimit)
	if err != nil || n < 0 {
		return s, fmt.Errorf("%s=%q: want a whole number of retries, 0 or more", name("retry-limit"), c.retryLimit)
	}
	s.policy.Limit = n
	ms, err := strconv.Atoi(c.retryDelay)
	if err != nil || ms < 0 {
		return s, fmt.Errorf("%s=%q: want whole milliseconds, 0 or more", name("retry-delay"), c.retryDelay)
	}
	s.policy.Delay = time.Duration(ms) * time.Millisecond
	for _, code := range c.retryOnCode {
		cc, err := rpcretry.ParseCode(code)
		if err != nil {
			return s, fmt.Errorf("%s: %w", name("retry-on-code"), err)
		}
		s.policy.Codes = append(s.policy.Codes, cc)
	}
	if len(s.policy.Codes) == 0 {
		s.policy.Codes = []codes.Code{codes.Unavailable}
	}
	sec, err := strconv.Atoi(c.requestTimeout)
	if err != nil || sec < 0 {
		return s, fmt.Errorf("%s=%q: want whole seconds, 0 (no limit) or more", name("request-timeout"), c.requestTimeout)
	}
	s.policy.Timeout = time.Duration(sec) * time.Second
	if bps, err := parseBytesPerSecond(c.minThroughput); err != nil || bps != 0 {
		return s, fmt.Errorf("%s=%q: hearth run cannot honour a minimum throughput (it does not stretch a call's deadline by its size); bound calls with --request-timeout instead", name("min-throughput"), c.minThroughput)
	}
	if c.keepaliveTime != "" {
		sec, err := strconv.Atoi(c.keepaliveTime)
		switch {
		case err != nil || sec < 0:
			return s, fmt.Errorf("%s=%q: want whole seconds, 0 (no pings) or at least 10", name("keepalive-time"), c.keepaliveTime)
		case sec == 0:
			s.keepalive = &keepalive.ClientParameters{Time: time.Duration(math.MaxInt64)}
		case sec < 10:
			// gRPC raises shorter periods to 10 s, and a server
			// (hearth server included) may close a connection that
			// pings more often: refuse rather than quietly change it.
			return s, fmt.Errorf("%s=%d: gRPC sends keepalive pings at most every 10 seconds; use 0 (none) or 10 or more", name("keepalive-time"), sec)
		default:
			s.keepalive = &keepalive.ClientParameters{Time: time.Duration(sec) * time.Second, Timeout: casclient.KeepaliveTimeout}
		}
	}
	switch c.lbPolicy {
	case "", "pick_first":
	case "round_robin":
		s.serviceConfig = `{"loadBalancingConfig":[{"round_robin":{}}]}`
	default:
		return s, fmt.Errorf("%s=%q: hearth run supports pick_first and round_robin (grpclb is not built into it)", name("load-balancing-policy"), c.lbPolicy)
	}
	if c.protocol != "" && c.protocol != "grpc" {
		return s, fmt.Errorf("%s=%q: hearth run speaks only grpc", name("protocol"), c.protocol)
	}
	if c.tokenReload != "" {
		d, err := parseTokenReload(c.tokenReload)
		if err != nil {
			return s, fmt.Errorf("%s=%q: %w", name("token-reload-interval"), c.tokenReload, err)
		}
		s.tokenReload = d
	}
	return s, nil
}

// parseBytesPerSecond parses buildbox's throughput: a number with an
// optional K, M, G or T suffix.
func parseBytesPerSecond(v string) (uint64, error) {
	mult := uint64(1)
	if i := len(v) - 1; i >= 0 {
		switch v[i] {
		case 'K', 'k':
			mult, v = 1e3, v[:i]
		case 'M', 'm':
			mult, v = 1e6, v[:i]
		case 'G', 'g':
			mult, v = 1e9, v[:i]
		case 'T', 't':
			mult, v = 1e12, v[:i]
		}
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return n * mult, err
}

// parseTokenReload parses buildbox's token reload interval: minutes, or a
// number followed by M (minutes) or H (hours).
func parseTokenReload(v string) (time.Duration, error) {
	unit := time.Minute
	switch {
	case strings.HasSuffix(v, "M"), strings.HasSuffix(v, "m"):
		v = v[:len(v)-1]
	case strings.HasSuffix(v, "H"), strings.HasSuffix(v, "h"):
		unit, v = time.Hour, v[:len(v)-1]
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, errors.New("want a positive whole number of minutes, optionally followed by M or H")
	}
	return time.Duration(n) * unit, nil
}

// alias merges a buildbox spelling of a flag into Hearth's: either may be
// given, not both with different values.
func alias(hearthName string, hearth *string, bbName, bb string) error {
	switch {
	case bb == "":
	case *hearth == "" || *hearth == bb:
		*hearth = bb
	default:
		return fmt.Errorf("--%s=%s and --%s=%s disagree; give one of them", hearthName, *hearth, bbName, bb)
	}
	return nil
}

// dialOptions are the credentials of --token-file and --tls-* (or their
// buildbox spellings) and the connection flags' settings, for --remote.
func (f *runFlags) dialOptions(logger *slog.Logger) (casclient.DialOptions, error) {
	var o casclient.DialOptions
	c := &f.cas
	for _, a := range []struct {
		hearthName string
		hearth     *string
		bbName, bb string
	}{
		{"token-file", &f.tokenFile, "access-token", c.accessToken},
		{"tls-ca", &f.tlsCA, "server-cert", c.serverCert},
		{"tls-cert", &f.tlsCert, "client-cert", c.clientCert},
		{"tls-key", &f.tlsKey, "client-key", c.clientKey},
	} {
		if err := alias(a.hearthName, a.hearth, a.bbName, a.bb); err != nil {
			return o, err
		}
	}
	s, err := c.settings()
	if err != nil {
		return o, err
	}
	if _, err := f.ra.settings(); err != nil {
		return o, err
	}
	s.policy.Logger = logger
	if f.tokenFile != "" {
		tok, err := auth.ReadTokenFile(f.tokenFile)
		if err != nil {
			return o, fmt.Errorf("--token-file (--access-token): %w", err)
		}
		if s.tokenReload > 0 {
			o.Extra = append(o.Extra, grpc.WithPerRPCCredentials(&reloadingToken{path: f.tokenFile, every: s.tokenReload, token: tok, read: time.Now(), logger: logger}))
		} else {
			o.Token = tok
		}
	} else if s.tokenReload > 0 {
		return o, errors.New("--token-reload-interval needs a token file (--access-token or --token-file)")
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return o, errors.New("--tls-cert (--client-cert) and --tls-key (--client-key) must be given together")
	}
	if f.tlsCA != "" || f.tlsCert != "" {
		cfg := &config.ClientTLS{CAFile: f.tlsCA, CertFile: f.tlsCert, KeyFile: f.tlsKey, UseNativeRoots: f.tlsCA == ""}
		tlsConfig, err := clientTLS(cfg)
		if err != nil {
			return o, fmt.Errorf("--tls-* (--server-cert, --client-*): %w", err)
		}
		o.TLS = tlsConfig
	}
	o.Extra = append(o.Extra, s.policy.DialOptions()...)
	if s.keepalive != nil {
		// Added after casclient's own keepalive option, so it wins.
		o.Extra = append(o.Extra, grpc.WithKeepaliveParams(*s.keepalive))
	}
	if s.serviceConfig != "" {
		o.Extra = append(o.Extra, grpc.WithDefaultServiceConfig(s.serviceConfig))
	}
	return o, nil
}

// reloadingToken sends the token of a file, re-read once every has passed
// since the last read (--token-reload-interval). A failed re-read keeps the
// previous token and is logged.
type reloadingToken struct {
	path   string
	every  time.Duration
	logger *slog.Logger

	mu    sync.Mutex
	token string
	read  time.Time
}

func (r *reloadingToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.read) >= r.every {
		if tok, err := auth.ReadTokenFile(r.path); err != nil {
			r.logger.Warn("re-reading the token file failed; keeping the previous token", "file", r.path, "err", err)
		} else {
			r.token = tok
		}
		r.read = time.Now()
	}
	return map[string]string{"authorization": "Bearer " + r.token}, nil
}

func (*reloadingToken) RequireTransportSecurity() bool { return false }
