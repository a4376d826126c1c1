package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const pw = lw + "persistent_workers."

func TestPersistentWorkers(t *testing.T) {
	runFieldCases(t, []fieldCase{
		{name: "defaults", body: ``, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "PersistentWorkers", w.PersistentWorkers, PersistentWorkers{
				Enabled: true, MaxWorkersPerPool: 4, IdleTimeout: 15 * time.Minute,
				MemoryLimitBytes: 2 << 30, MaxTotalMemoryBytes: 8 << 30,
				Protocols: []WorkerProtocol{ProtocolProto, ProtocolJSON}, Sandbox: SandboxNone,
			})
		}},
		{name: "all set", body: `persistent_workers: {enabled: false, max_workers_per_pool: 3, idle_timeout_s: "5m", max_invocations: 100,
				memory_limit_bytes: "512MiB", max_total_memory_bytes: 4294967296, protocols: ["json"], sandbox: "bwrap",
				verify_fraction: 0.25, prewarm: 2}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "PersistentWorkers", w.PersistentWorkers, PersistentWorkers{
					Enabled: false, MaxWorkersPerPool: 3, IdleTimeout: 5 * time.Minute, MaxInvocations: 100,
					MemoryLimitBytes: 512 << 20, MaxTotalMemoryBytes: 4 << 30,
					Protocols: []WorkerProtocol{ProtocolJSON}, Sandbox: SandboxBwrap, VerifyFraction: 0.25, Prewarm: 2,
				})
				wantEqual(t, "Supports(json)", w.PersistentWorkers.Supports(ProtocolJSON), true)
				wantEqual(t, "Supports(proto)", w.PersistentWorkers.Supports(ProtocolProto), false)
			}},
		{name: "idle timeout zero means never", body: `persistent_workers: {idle_timeout_s: 0}`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "IdleTimeout", w.PersistentWorkers.IdleTimeout, time.Duration(0))
		}},
		{name: "enabled not bool", body: `persistent_workers: {enabled: 1}`, wantErr: pw + "enabled: want true or false, got number 1"},
		{name: "max_workers_per_pool negative", body: `persistent_workers: {max_workers_per_pool: -1}`, wantErr: pw + "max_workers_per_pool: -1 is out of range"},
		{name: "idle_timeout_s bad", body: `persistent_workers: {idle_timeout_s: "a while"}`, wantErr: pw + `idle_timeout_s: invalid duration "a while"`},
		{name: "max_invocations string", body: `persistent_workers: {max_invocations: "many"}`, wantErr: pw + `max_invocations: want an integer, got string "many"`},
		{name: "memory_limit_bytes negative", body: `persistent_workers: {memory_limit_bytes: -5}`, wantErr: pw + "memory_limit_bytes: want a non-negative whole number of bytes"},
		{name: "max_total_memory_bytes bad unit", body: `persistent_workers: {max_total_memory_bytes: "4 parsecs"}`, wantErr: pw + `max_total_memory_bytes: invalid size "4 parsecs"`},
		{name: "limit above total", body: `persistent_workers: {memory_limit_bytes: "2GiB", max_total_memory_bytes: "1GiB"}`,
			wantErr: pw + "memory_limit_bytes: 2147483648 is larger than max_total_memory_bytes (1073741824)"},
		{name: "protocols empty", body: `persistent_workers: {protocols: []}`, wantErr: pw + "protocols: must list at least one protocol"},
		{name: "protocols unknown", body: `persistent_workers: {protocols: ["proto", "xml"]}`, wantErr: pw + `protocols[1]: unknown value "xml" (want proto, json)`},
		{name: "protocols duplicate", body: `persistent_workers: {protocols: ["json", "json"]}`, wantErr: pw + `protocols[1]: "json" is listed twice`},
		{name: "sandbox unknown", body: `persistent_workers: {sandbox: "docker"}`, wantErr: pw + `sandbox: unknown value "docker" (want none, bwrap)`},
		{name: "verify_fraction above one", body: `persistent_workers: {verify_fraction: 1.5}`, wantErr: pw + "verify_fraction: 1.5 is out of range (want 0 to 1)"},
		{name: "verify_fraction NaN", body: `persistent_workers: {verify_fraction: NaN}`, wantErr: pw + "verify_fraction: want a finite number, got number NaN"},
		{name: "prewarm above pool", body: `persistent_workers: {max_workers_per_pool: 1, prewarm: 2}`, wantErr: pw + "prewarm: 2 is larger than max_workers_per_pool (1)"},
		{name: "prewarm raises derived pool size", body: `max_inflight_tasks: 1, persistent_workers: {prewarm: 3}`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxWorkersPerPool", w.PersistentWorkers.MaxWorkersPerPool, 3)
		}},
		{name: "not an object", body: `persistent_workers: true`, wantErr: lw + "persistent_workers: want an object, got boolean true"},
	})
}

func TestUnknownFieldsAtEveryLevel(t *testing.T) {
	cases := []struct {
		name, doc, wantErr string
	}{
		{"top level", `{workers: [{local: {` + baseLocal + `}}], worker: 1}`, `worker: unknown field; did you mean "workers"?`},
		{"worker entry kind", `{workers: [{remote: {}}]}`, `workers[0].remote: unknown field (want exactly one of local)`},
		{"worker entry extra key", `{workers: [{local: {` + baseLocal + `}, name: "x"}]}`, `workers[0]: want an object with exactly one of the keys local, got keys local, name`},
		{"local", `{workers: [{local: {` + baseLocal + `max_action_timeot: 5}}]}`, lw + `max_action_timeot: unknown field; did you mean "max_action_timeout"?`},
		{"endpoint", `{workers: [{local: {work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://x:1", address: "y"}}}]}`, lw + "worker_api_endpoint.address: unknown field (known fields: timeout, tls_config, token_file, uri, uris)"},
		{"tls_config", `{workers: [{local: {work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpcs://x:1", tls_config: {use_native_roots: true, ca: "/a"}}}}]}`, lw + "worker_api_endpoint.tls_config.ca: unknown field"},
		{"upload_action_result", `{workers: [{local: {` + baseLocal + `upload_action_result: {strategy: "never"}}}]}`, lw + "upload_action_result.strategy: unknown field"},
		{"directory_cache", `{workers: [{local: {` + baseLocal + `directory_cache: {max_entry: 5}}}]}`, lw + `directory_cache.max_entry: unknown field; did you mean "max_entries"?`},
		{"persistent_workers", `{workers: [{local: {` + baseLocal + `persistent_workers: {max_workers: 5}}}]}`, lw + "persistent_workers.max_workers: unknown field"},
		{"platform property", `{workers: [{local: {` + baseLocal + `platform_properties: {a: {cmd: "x"}}}}]}`, lw + "platform_properties.a.cmd: unknown field"},
		{"environment source", `{workers: [{local: {` + baseLocal + `additional_environment: {A: {val: "x"}}}}]}`, lw + "additional_environment.A.val: unknown field"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse([]byte(tc.doc), testMachine, testLookup, false)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v\nwant it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestTopLevel(t *testing.T) {
	cases := []struct {
		name, doc, wantErr string
		wantWarnings       []string
	}{
		{name: "NativeLink sections are ignored with a warning",
			doc:          `{stores: [{name: "X", noop: {}}], schedulers: [], servers: [], global: {max_open_files: 1}, experimental_origin_events: {}, workers: [{local: {` + baseLocal + `}}]}`,
			wantWarnings: []string{"stores: ignored", "schedulers: ignored", "servers: ignored", "global: ignored", "experimental_origin_events: ignored"}},
		{name: "workers missing", doc: `{stores: []}`, wantErr: "workers: required"},
		{name: "workers empty", doc: `{workers: []}`, wantErr: "workers: must list at least one worker"},
		{name: "workers not an array", doc: `{workers: {local: {}}}`, wantErr: "workers: want an array of workers, got an object"},
		{name: "top level not an object", doc: `[1]`, wantErr: "want an object, got an array"},
		{name: "local not an object", doc: `{workers: [{local: "x"}]}`, wantErr: `workers[0].local: want an object, got string "x"`},
		{name: "local null", doc: `{workers: [{local: null}]}`, wantErr: `workers[0].local: must not be null`},
		{name: "shared work directory", doc: `{workers: [{local: {` + baseLocal + `}}, {local: {` + baseLocal + `}}]}`,
			wantErr: `workers[1].local.work_directory: "/tmp/hearth-config-test/work" overlaps the work_directory "/tmp/hearth-config-test/work" of workers[0]`},
		{name: "localcas_socket too long", doc: `{workers: [{local: {` + baseLocal + ` localcas_socket: "/tmp/` + strings.Repeat("s", 103) + `"}}]}`,
			wantErr: `workers[0].local.localcas_socket: "/tmp/sss`},
		{name: "localcas_socket at the limit", doc: `{workers: [{local: {` + baseLocal + ` localcas_socket: "/tmp/` + strings.Repeat("s", 102) + `"}}]}`},
		{name: "nested work directory", doc: `{workers: [{local: {` + baseLocal + `}}, {local: {worker_api_endpoint: {uri: "grpc://x:1"}, work_directory: "/tmp/hearth-config-test/work/2"}}]}`,
			wantErr: `workers[1].local.work_directory: "/tmp/hearth-config-test/work/2" overlaps`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parse([]byte(tc.doc), testMachine, testLookup, false)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v\nwant it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.wantWarnings {
				wantWarning(t, f.Warnings, w)
			}
		})
	}
}

func TestEveryErrorIsReported(t *testing.T) {
	_, err := parseLocal(`max_inflight_tasks: -1, sandboxx: 1, persistent_workers: {sandbox: "vm"}`, false)
	if err == nil {
		t.Fatal("parsed")
	}
	for _, want := range []string{lw + "max_inflight_tasks:", lw + "sandboxx: unknown field", pw + "sandbox: unknown value"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	var fe *FieldError
	if !errors.As(err, &fe) || !strings.HasPrefix(fe.Path, "workers[0].local.") {
		t.Errorf("errors.As FieldError = %+v", fe)
	}
}

func TestJSON5Syntax(t *testing.T) {
	cases := []struct {
		name, doc, wantErr string
	}{
		{name: "comments, trailing commas, unquoted keys, single quotes, hex", doc: `
			// line comment
			/* block
			   comment */
			{
			  workers: [
			    { 'local': {
			        "worker_api_endpoint": { uri: 'grpc://127.0.0.1:50061', },
			        work_directory: '/tmp/hearth-config-test/work', // trailing comment
			        max_inflight_tasks: 0x3,
			        name: 'it\'s',
			    }, },
			  ],
			}
			// after`},
		{name: "byte order mark", doc: "\uFEFF{workers: [{local: {" + baseLocal + "}}]}"},
		{name: "syntax error position", doc: "{\n  workers: [\n    {local: {name: ,}},\n  ],\n}", wantErr: "JSON5 syntax error at line 3, column 20"},
		{name: "unclosed", doc: "{workers: [", wantErr: "unexpected end of file"},
		{name: "trailing text", doc: "{workers: [{local: {" + baseLocal + "}}]}\n{again: 1}", wantErr: "line 2, column 1: unexpected text after the top-level value"},
		{name: "empty", doc: " // nothing\n", wantErr: "the configuration is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parse([]byte(tc.doc), testMachine, testLookup, false)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v\nwant it to contain %q", err, tc.wantErr)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "byte order mark" {
				return
			}
			w := f.Workers[0].Local
			wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, 3)
			wantEqual(t, "Name", w.Name, "it's")
			wantEqual(t, "URI", w.WorkerAPIEndpoint.URI, "grpc://127.0.0.1:50061")
		})
	}
}

func TestParseEmbeddedEndpointOptional(t *testing.T) {
	doc := []byte(`{workers: [{local: {work_directory: "/tmp/hearth-embedded-test"}}]}`)
	if _, err := parse(doc, testMachine, testLookup, false); err == nil || !strings.Contains(err.Error(), "worker_api_endpoint") {
		t.Fatalf("worker file without endpoint: err = %v", err)
	}
	f, err := parse(doc, testMachine, testLookup, true)
	if err != nil {
		t.Fatalf("embedded config without endpoint: %v", err)
	}
	if f.Workers[0].Local.WorkDirectory != "/tmp/hearth-embedded-test" {
		t.Fatalf("work directory %q", f.Workers[0].Local.WorkDirectory)
	}
	if _, err := parse([]byte(`{workers: [{local: {}}]}`), testMachine, testLookup, true); err == nil || !strings.Contains(err.Error(), "work_directory") {
		t.Fatalf("embedded config without work_directory: err = %v", err)
	}
}

func TestLocalSandbox(t *testing.T) {
	f, err := parseLocal(`sandbox: "bwrap"`, false)
	if err != nil {
		t.Fatal(err)
	}
	if f.Workers[0].Local.Sandbox != SandboxBwrap || f.Workers[0].Local.PersistentWorkers.Sandbox != SandboxNone {
		t.Fatalf("sandbox = %v, persistent_workers.sandbox = %v", f.Workers[0].Local.Sandbox, f.Workers[0].Local.PersistentWorkers.Sandbox)
	}
	if _, err := parseLocal(`sandbox: "docker"`, false); err == nil || !strings.Contains(err.Error(), `local.sandbox: unknown value "docker"`) {
		t.Fatalf("bad sandbox: %v", err)
	}
}
