// Package tlsreload owns the server side of Hearth's TLS: the certificate,
// key and (for mTLS) client CA files of a listener, loaded at start and
// loaded again when they change on disk or when Reload is called (hearth
// wires SIGHUP to it), without dropping connections. A reload that fails
// (a half-written file, a key that does not match) keeps the previous
// files in force and is logged.
package tlsreload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Files names the PEM files of a listener.
type Files struct {
	CertFile, KeyFile string
	// ClientCAFile, when set, turns on mTLS: clients must present a
	// certificate signed by one of its CAs.
	ClientCAFile string
}

// Reloader serves the current files' certificate to every new handshake.
type Reloader struct {
	files  Files
	logger *slog.Logger

	mu    sync.Mutex
	state *state
}

type state struct {
	cert  *tls.Certificate
	pool  *x509.CertPool
	stamp string // sizes and modification times of the files
}

// New loads the files; an error names the file that is wrong.
func New(files Files, logger *slog.Logger) (*Reloader, error) {
	if files.CertFile == "" || files.KeyFile == "" {
		return nil, errors.New("a TLS certificate needs both a certificate file and a key file")
	}
	if logger == nil {
		logger = slog.Default()
	}
	r := &Reloader{files: files, logger: logger}
	st, err := r.load()
	if err != nil {
		return nil, err
	}
	r.state = st
	return r, nil
}

// MutualTLS reports whether clients must present a certificate.
func (r *Reloader) MutualTLS() bool { return r.files.ClientCAFile != "" }

func (r *Reloader) load() (*state, error) {
	stamp := r.stamp()
	cert, err := tls.LoadX509KeyPair(r.files.CertFile, r.files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s with key %s: %w", r.files.CertFile, r.files.KeyFile, err)
	}
	st := &state{cert: &cert, stamp: stamp}
	if r.files.ClientCAFile != "" {
		pem, err := os.ReadFile(r.files.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("TLS client CA: %w", err)
		}
		st.pool = x509.NewCertPool()
		if !st.pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS client CA %s holds no PEM certificate", r.files.ClientCAFile)
		}
	}
	return st, nil
}

// stamp summarises the files' sizes and modification times; a change of
// any of them means "reload".
func (r *Reloader) stamp() string {
	s := ""
	for _, f := range []string{r.files.CertFile, r.files.KeyFile, r.files.ClientCAFile} {
		if f == "" {
			continue
		}
		if fi, err := os.Stat(f); err == nil {
			s += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
		} else {
			s += "missing;"
		}
	}
	return s
}

// Reload loads the files again. On error the previous ones stay in force.
func (r *Reloader) Reload() error {
	st, err := r.load()
	if err != nil {
		r.logger.Warn("TLS reload failed; keeping the previous certificate", "err", err)
		return err
	}
	r.mu.Lock()
	r.state = st
	r.mu.Unlock()
	r.logger.Info("TLS certificate loaded", "cert", r.files.CertFile, "client_ca", r.files.ClientCAFile, "expires", st.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// Watch reloads the files whenever their size or modification time
// changes, checking every interval until ctx ends.
func (r *Reloader) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		old := r.state.stamp
		r.mu.Unlock()
		if now := r.stamp(); now != old {
			// A failed reload is retried only at the next change, not
			// every tick, so that a broken file is logged once.
			if err := r.Reload(); err != nil {
				r.mu.Lock()
				r.state = &state{cert: r.state.cert, pool: r.state.pool, stamp: now}
				r.mu.Unlock()
			}
		}
	}
}

func (r *Reloader) current() *state {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// Config returns a tls.Config for a listener speaking the given ALPN
// protocols ("h2" for gRPC). Each handshake gets the files current at
// that moment.
func (r *Reloader) Config(nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: nextProtos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			st := r.current()
			c := &tls.Config{
				MinVersion:   tls.VersionTLS12,
				NextProtos:   nextProtos,
				Certificates: []tls.Certificate{*st.cert},
			}
			if st.pool != nil {
				c.ClientCAs = st.pool
				c.ClientAuth = tls.RequireAndVerifyClientCert
			}
			return c, nil
		},
	}
}
