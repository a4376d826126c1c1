package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// A `hearth server` with k `hearth worker` processes on loopback, for the
// tsc scenario's warm-hit ratio across executors.
type hearthCluster struct {
	server  *hearthServer
	workers []*hearthServer
}

func (b *bench) startCluster(ctx context.Context, dir, name string, k, inflight int) (*hearthCluster, error) {
	dataDir := filepath.Join(dir, "cluster-data")
	srv, err := b.startHearthProcess(filepath.Join(dir, name+"-server.log"),
		[]string{"server", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", dataDir})
	if err != nil {
		return nil, err
	}
	srv.DataDir = dataDir
	c := &hearthCluster{server: srv}
	if err := srv.waitReady(ctx); err != nil {
		c.kill()
		return nil, fmt.Errorf("hearth server: %w", err)
	}
	for i := range k {
		config := fmt.Sprintf(`{workers: [{local: {name: "exec-%d", worker_api_endpoint: {uri: "grpc://%s"}, work_directory: %q, max_inflight_tasks: %d}}]}`,
			i+1, srv.GRPCAddr, filepath.Join(dir, fmt.Sprintf("exec-%d", i+1), "work"), inflight)
		path := filepath.Join(dir, fmt.Sprintf("exec-%d.json5", i+1))
		if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
			c.kill()
			return nil, err
		}
		w, err := b.startHearthProcess(filepath.Join(dir, fmt.Sprintf("%s-exec-%d.log", name, i+1)), []string{"worker", "--config", path})
		if err != nil {
			c.kill()
			return nil, err
		}
		c.workers = append(c.workers, w)
	}
	if err := c.waitExecutors(ctx, k); err != nil {
		c.kill()
		return nil, err
	}
	return c, nil
}

// waitExecutors polls the server's /status until k executors are connected.
func (c *hearthCluster) waitExecutors(ctx context.Context, k int) error {
	deadline := time.Now().Add(time.Minute)
	for {
		var st struct {
			Executors []json.RawMessage `json:"executors"`
		}
		resp, err := http.Get("http://" + c.server.HTTPAddr + "/status")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		if err == nil && len(st.Executors) >= k {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d executors did not connect within a minute (last error: %v)", k, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop stops the workers, then the server, and reports the first failure.
func (c *hearthCluster) stop() error {
	var first error
	for _, w := range c.workers {
		if err := w.stop(); err != nil && first == nil {
			first = fmt.Errorf("hearth worker: %w", err)
		}
	}
	if err := c.server.stop(); err != nil && first == nil {
		first = fmt.Errorf("hearth server: %w", err)
	}
	return first
}

func (c *hearthCluster) kill() {
	for _, w := range c.workers {
		w.kill()
	}
	c.server.kill()
}

// tscBuildCluster is the persistent mode on a cluster of k executors, with
// the same warm-up, clean and restart as tscBuildRemote.
func tscBuildCluster(ctx context.Context, b *bench, dir, ws string, env []string, k int) (tscBuild, error) {
	if err := setTscMode(ws, tscKey); err != nil {
		return tscBuild{}, err
	}
	c, err := b.startCluster(ctx, dir, "cluster-warmup", k, b.opts.tscInflight)
	if err != nil {
		return tscBuild{}, err
	}
	defer c.kill()
	z := newTscBazel(ctx, dir, ws, env, "cluster")
	defer z.run("shutdown")
	flags := func(c *hearthCluster) []string {
		return append([]string{"--remote_executor=grpc://" + c.server.GRPCAddr, "--noremote_accept_cached"}, strings.Fields(b.opts.tscRemote)...)
	}
	if _, _, err := z.build(flags(c)...); err != nil {
		return tscBuild{}, fmt.Errorf("warm-up: %w", err)
	}
	if err := c.stop(); err != nil {
		return tscBuild{}, err
	}
	if _, err := z.run("clean"); err != nil {
		return tscBuild{}, err
	}
	if err := setTscSources(ws, b.opts.tscLibs, "cluster"); err != nil {
		return tscBuild{}, err
	}
	if c, err = b.startCluster(ctx, dir, "cluster", k, b.opts.tscInflight); err != nil {
		return tscBuild{}, err
	}
	defer c.kill()
	start := time.Now()
	res, out, err := z.build(flags(c)...)
	os.WriteFile(filepath.Join(dir, "cluster-build.log"), []byte(out), 0o644)
	if err != nil {
		return res, err
	}
	if err := c.stop(); err != nil {
		return res, err
	}
	if res.stages, err = readStageStats(filepath.Join(c.server.DataDir, "ac"), start); err != nil {
		return res, err
	}
	if err := res.stages.writeActions(filepath.Join(dir, "cluster-actions.txt")); err != nil {
		return res, err
	}
	return res, checkTscProcesses("persistent", res.processes, b.opts.tscLibs)
}
