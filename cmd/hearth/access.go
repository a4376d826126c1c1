package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/serverconfig"
	"github.com/hearth-build/hearth/internal/tlsreload"
)

// tlsPollInterval is how often the TLS files are checked for changes
// (SIGHUP reloads them at once).
const tlsPollInterval = 10 * time.Second

// accessFlags are the server's TLS and access settings.
type accessFlags struct {
	configServer string
	tlsCert      string
	tlsKey       string
	tlsClientCA  string
	insecure     bool
	// principals come from --config-server only: tokens have no flags,
	// so that their hashes do not end up in process listings.
	principals []auth.PrincipalConfig
	// embeddedToken authenticates `hearth serve`'s embedded executors
	// (set by serve; never leaves the process).
	embeddedToken string
}

func (a *accessFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.configServer, "config-server", "", "server configuration file (JSON5: listen, http, tls, auth, storage; see the README); flags given as well override it")
	fs.StringVar(&a.tlsCert, "tls-cert", "", "PEM certificate (chain) of the gRPC listener; reloaded when it changes or on SIGHUP")
	fs.StringVar(&a.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&a.tlsClientCA, "tls-client-ca", "", "PEM CA(s) that must have signed the clients' certificates (mTLS)")
	fs.BoolVar(&a.insecure, "insecure", false, "allow plaintext on a non-loopback address (anyone who can reach it can read and write the cache and register executors)")
}

// resolveServerFlags applies --config-server to f: each setting of the file
// is used unless its flag was given on the command line.
func resolveServerFlags(fs *flag.FlagSet, f *serverFlags) (*serverconfig.File, error) {
	if f.access.configServer == "" {
		return nil, nil
	}
	file, err := serverconfig.Load(f.access.configServer)
	if err != nil {
		return nil, err
	}
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	setString := func(name string, dst *string, v *string) {
		if v != nil && !given[name] {
			*dst = *v
		}
	}
	setString("listen", &f.listen, file.Listen)
	setString("http", &f.httpAddr, file.HTTP)
	if file.HTTPPprof != nil && !given["http-pprof"] {
		f.httpPprof = *file.HTTPPprof
	}
	setString("data", &f.data, file.Storage.DataDir)
	if file.Storage.CASMaxBytes != nil && !given["cas-max-bytes"] {
		f.casMaxBytes = *file.Storage.CASMaxBytes
	}
	if file.ActionCache != nil && file.ActionCache.Redis != nil {
		f.acRedis = file.ActionCache.Redis
	}
	if file.Scheduler != nil {
		f.schedRedis = file.Scheduler.Redis
	}
	if file.Insecure != nil && !given["insecure"] {
		f.access.insecure = *file.Insecure
	}
	if t := file.TLS; t != nil {
		setString("tls-cert", &f.access.tlsCert, &t.CertFile)
		setString("tls-key", &f.access.tlsKey, &t.KeyFile)
		if t.ClientCAFile != "" {
			setString("tls-client-ca", &f.access.tlsClientCA, &t.ClientCAFile)
		}
	}
	if file.Auth != nil {
		f.access.principals = file.Auth.Principals
	}
	f.stores = file.Stores
	return file, nil
}

// access is the server's TLS and policy, built from accessFlags.
type access struct {
	tls    *tlsreload.Reloader // nil: plaintext
	policy *auth.Policy        // nil: no access control
	stop   func()
}

// checkAccess checks the access flags and the listening addresses against
// the security rules, before anything is opened.
func checkAccess(f serverFlags) error {
	if f.httpPprof && f.httpAddr == "" {
		return errors.New("--http-pprof (http_pprof) needs the HTTP port: the profiles are served there, and --http (http) is empty")
	}
	a := f.access
	if (a.tlsCert == "") != (a.tlsKey == "") {
		return errors.New("--tls-cert and --tls-key must be given together")
	}
	if a.tlsClientCA != "" && a.tlsCert == "" {
		return errors.New("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
	}
	if a.tlsCert == "" {
		if err := checkPlaintext("gRPC", f.listen, a.insecure, "give --tls-cert and --tls-key (or tls in --config-server)"); err != nil {
			return err
		}
	}
	if len(a.principals) > 0 && f.httpAddr != "" {
		// The HTTP port carries the same tokens, in clear.
		if err := checkPlaintext("HTTP", f.httpAddr, a.insecure, "its requests carry bearer tokens; bind --http to 127.0.0.1 (or disable it with --http \"\")"); err != nil {
			return err
		}
	}
	return nil
}

// openAccess loads the TLS files and the policy of checked flags.
// opInstance resolves operation names for the policy.
func openAccess(f serverFlags, logger *slog.Logger, opInstance func(string) (string, bool)) (*access, error) {
	a := f.access
	acc := &access{stop: func() {}}
	if a.tlsCert != "" {
		r, err := tlsreload.New(tlsreload.Files{CertFile: a.tlsCert, KeyFile: a.tlsKey, ClientCAFile: a.tlsClientCA}, logger)
		if err != nil {
			return nil, err
		}
		acc.tls = r
		ctx, cancel := context.WithCancel(context.Background())
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		go r.Watch(ctx, tlsPollInterval)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					r.Reload()
				}
			}
		}()
		acc.stop = func() { signal.Stop(hup); cancel() }
	}
	principals := a.principals
	if len(principals) > 0 && a.embeddedToken != "" {
		principals = append(principals[:len(principals):len(principals)], auth.PrincipalConfig{
			Name: "(embedded executor)", TokenSHA256: []string{auth.HashToken(a.embeddedToken)},
			Grants: []auth.Grant{{Rights: auth.Executor}},
		})
	}
	if len(principals) > 0 {
		p, err := auth.New(auth.Config{Principals: principals, OperationInstance: opInstance})
		if err != nil {
			acc.stop()
			return nil, fmt.Errorf("auth: %w", err)
		}
		acc.policy = p
	} else if a.tlsClientCA != "" {
		logger.Warn("mTLS without auth principals: every client holding a certificate signed by --tls-client-ca has every right, executor included")
	}
	return acc, nil
}

// serverOptions are the gRPC server options of the access settings.
func (a *access) serverOptions() []grpc.ServerOption {
	var opts []grpc.ServerOption
	if a.tls != nil {
		opts = append(opts, grpc.Creds(inProcessPassthrough{credentials.NewTLS(a.tls.Config("h2"))}))
	}
	if a.policy != nil {
		opts = append(opts, grpc.ChainUnaryInterceptor(a.policy.UnaryInterceptor()), grpc.ChainStreamInterceptor(a.policy.StreamInterceptor()))
	}
	return opts
}

// httpHandler protects every HTTP path but /healthz (probes carry no
// credentials) when a policy is in force: any authenticated principal may
// read them.
func (a *access) httpHandler(mux http.Handler) http.Handler {
	if a.policy == nil {
		return mux
	}
	protected := a.policy.RequireHTTP(0, "", mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			mux.ServeHTTP(w, r)
			return
		}
		protected.ServeHTTP(w, r)
	})
}

// checkPlaintext refuses a plaintext listener off loopback unless insecure.
func checkPlaintext(what, addr string, insecure bool, fix string) error {
	if insecure || isLoopbackAddr(addr) {
		return nil
	}
	return fmt.Errorf("refusing to serve %s in plaintext on %s, which is not a loopback address: anyone who can reach it could read and overwrite the cache and register as an executor to answer other people's actions; %s, or pass --insecure on a network you trust", what, addr, fix)
}

// isLoopbackAddr reports whether host:port binds loopback only.
func isLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkRunnerCredentials refuses runner_command when the server needs
// credentials: the runner is given only --remote, so its calls would fail.
func checkRunnerCredentials(path string, w *config.LocalWorker, needsCredentials bool) error {
	if len(w.RunnerCommand) > 0 && needsCredentials {
		return fmt.Errorf("%s.runner_command: not supported when the server requires TLS client settings or a token (the runner would be given --remote only)", path)
	}
	return nil
}

// markInProcess wraps the embedded executors' in-process listener so that
// the server's TLS credentials let its connections through without a
// handshake: they never leave the process. Their calls still need the
// in-process token when auth is on.
func markInProcess(l net.Listener) net.Listener { return inProcessListener{l} }

type inProcessListener struct{ net.Listener }

func (l inProcessListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return inProcessConn{c}, nil
}

type inProcessConn struct{ net.Conn }

// inProcessPassthrough is TLS for every connection but in-process ones.
type inProcessPassthrough struct {
	credentials.TransportCredentials
}

type inProcessAuthInfo struct{ credentials.CommonAuthInfo }

func (inProcessAuthInfo) AuthType() string { return "in-process" }

func (c inProcessPassthrough) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if _, ok := conn.(inProcessConn); ok {
		return conn, inProcessAuthInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
	}
	return c.TransportCredentials.ServerHandshake(conn)
}

func (c inProcessPassthrough) Clone() credentials.TransportCredentials {
	return inProcessPassthrough{c.TransportCredentials.Clone()}
}
