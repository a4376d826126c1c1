package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var testMachine = Machine{CPUs: 4, MemoryBytes: 16 << 30, Hostname: "testhost"}

var testVars = map[string]string{"RACK": "r7", "EMPTY": "", "WORKER_HOME": "/home/tester", "SLOTS": "12"}

func testLookup(name string) (string, bool) {
	v, ok := testVars[name]
	return v, ok
}

const baseLocal = `worker_api_endpoint: {uri: "grpc://127.0.0.1:50061"}, work_directory: "/tmp/hearth-config-test/work", `

// parseLocal parses a file with one local worker whose object holds body,
// after the two required fields unless noBase.
func parseLocal(body string, noBase bool) (*File, error) {
	if !noBase {
		body = baseLocal + body
	}
	return parse([]byte("{workers: [{local: {"+body+"}}]}"), testMachine, testLookup, false)
}

type fieldCase struct {
	name    string
	body    string
	noBase  bool
	wantErr string // substring of the error; empty means it must parse
	check   func(t *testing.T, w *LocalWorker, warnings []string)
}

func runFieldCases(t *testing.T, cases []fieldCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseLocal(tc.body, tc.noBase)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("parsed, want error containing %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q\nwant it to contain %q", err, tc.wantErr)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if len(f.Workers) != 1 {
				t.Fatalf("got %d workers, want 1", len(f.Workers))
			}
			if tc.check != nil {
				tc.check(t, &f.Workers[0].Local, f.Warnings)
			}
		})
	}
}

func wantEqual[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

func wantWarning(t *testing.T, warnings []string, substr string) {
	t.Helper()
	for _, w := range warnings {
		if strings.Contains(w, substr) {
			return
		}
	}
	t.Errorf("no warning contains %q; warnings: %q", substr, warnings)
}

const lw = "workers[0].local."

func TestNameEndpointAndWorkDirectory(t *testing.T) {
	runFieldCases(t, []fieldCase{
		{name: "name", body: `name: "w-${RACK}-"`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "Name", w.Name, "w-r7-")
		}},
		{name: "name default is the host name", body: ``, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "Name", w.Name, "testhost")
		}},
		{name: "name not a string", body: `name: 5`, wantErr: lw + "name: want a string, got number 5"},
		{name: "name unset variable", body: `name: "$NOPE_UNSET"`, wantErr: lw + "name: environment variable NOPE_UNSET is not set"},
		{name: "endpoint grpc", body: ``, check: func(t *testing.T, w *LocalWorker, _ []string) {
			e := w.WorkerAPIEndpoint
			wantEqual(t, "URI", e.URI, "grpc://127.0.0.1:50061")
			wantEqual(t, "Timeout", e.Timeout, DefaultEndpointTimeout)
			wantEqual(t, "Secure", e.Secure(), false)
			wantEqual(t, "DialTarget", e.DialTarget(), "127.0.0.1:50061")
		}},
		{name: "endpoint grpcs native roots and timeout", noBase: true,
			body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpcs://sched.example", timeout: 0.5, tls_config: {use_native_roots: true}}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				e := w.WorkerAPIEndpoint
				wantEqual(t, "Timeout", e.Timeout, 500*time.Millisecond)
				wantEqual(t, "TLS", e.TLS, &ClientTLS{UseNativeRoots: true})
				wantEqual(t, "Secure", e.Secure(), true)
				wantEqual(t, "DialTarget", e.DialTarget(), "sched.example:443")
			}},
		{name: "endpoint tls files", noBase: true,
			body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "https://s:8443", tls_config: {ca_file: "/ca.pem", cert_file: "/c.pem", key_file: "/k.pem"}}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "TLS", w.WorkerAPIEndpoint.TLS, &ClientTLS{CAFile: "/ca.pem", CertFile: "/c.pem", KeyFile: "/k.pem"})
			}},
		{name: "endpoint unix", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "unix:///run/hearth.sock"}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "DialTarget", w.WorkerAPIEndpoint.DialTarget(), "unix:///run/hearth.sock")
			}},
		{name: "endpoint uris", noBase: true,
			body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: ["grpc://10.0.0.1:8980", "grpc://hearth-b:8980"], timeout: 2}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				e := w.WorkerAPIEndpoint
				wantEqual(t, "URIs", e.URIs, []string{"grpc://10.0.0.1:8980", "grpc://hearth-b:8980"})
				wantEqual(t, "URI", e.URI, "grpc://10.0.0.1:8980")
				wantEqual(t, "Addresses", e.Addresses(), e.URIs)
				wantEqual(t, "Timeout", e.Timeout, 2*time.Second)
			}},
		{name: "endpoint one uri has one address", body: ``, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "URIs", w.WorkerAPIEndpoint.URIs, nil)
			wantEqual(t, "Addresses", w.WorkerAPIEndpoint.Addresses(), []string{"grpc://127.0.0.1:50061"})
		}},
		{name: "endpoint uris with tls", noBase: true,
			body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: ["grpcs://a.example:443", "grpcs://b.example:443"], tls_config: {ca_file: "/ca.pem"}}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "Secure", w.WorkerAPIEndpoint.Secure(), true)
			}},
		{name: "endpoint uris token warns for each plaintext remote", noBase: true,
			body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: ["grpc://127.0.0.1:1", "grpc://b.example:2"], token_file: "/t"}`,
			check: func(t *testing.T, w *LocalWorker, warnings []string) {
				wantWarning(t, warnings, "clear text to grpc://b.example:2")
			}},
		{name: "endpoint uri and uris", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://a:1", uris: ["grpc://b:1"]}`,
			wantErr: lw + "worker_api_endpoint.uris: set uri (one server) or uris (several), not both"},
		{name: "endpoint uris empty", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: []}`,
			wantErr: lw + "worker_api_endpoint.uris: is empty"},
		{name: "endpoint uris not a list", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: "grpc://a:1"}`,
			wantErr: lw + "worker_api_endpoint.uris: want an array of strings"},
		{name: "endpoint uris empty entry", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: ["grpc://a:1", ""]}`,
			wantErr: lw + "worker_api_endpoint.uris[1]: is empty"},
		{name: "endpoint uris duplicate", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: ["grpc://a:1", "grpc://b:1", "grpc://A:1"]}`,
			wantErr: lw + `worker_api_endpoint.uris[2]: "grpc://A:1" names the same server as ` + lw + "worker_api_endpoint.uris[0]"},
		{name: "endpoint uris malformed", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: ["grpc://a:1", "grpc://b"]}`,
			wantErr: lw + `worker_api_endpoint.uris[1]: invalid uri "grpc://b": no port`},
		{name: "endpoint uris mixed tls", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: ["grpc://a:1", "grpcs://b:1"]}`,
			wantErr: lw + `worker_api_endpoint.uris[1]: "grpcs://b:1": every server must use TLS`},
		{name: "endpoint uris unix among several", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: ["grpc://a:1", "unix:///run/h.sock"]}`,
			wantErr: lw + `worker_api_endpoint.uris[1]: "unix:///run/h.sock": with several servers each must be grpc://host:port`},
		{name: "endpoint one unix in uris", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uris: ["unix:///run/h.sock"]}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "Addresses", w.WorkerAPIEndpoint.Addresses(), []string{"unix:///run/h.sock"})
			}},
		{name: "endpoint missing", noBase: true, body: `work_directory: "/tmp/w"`, wantErr: lw + "worker_api_endpoint: required"},
		{name: "endpoint uri missing", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {timeout: 1}`, wantErr: lw + "worker_api_endpoint.uri: required"},
		{name: "endpoint bad scheme", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "ftp://x:1"}`,
			wantErr: lw + `worker_api_endpoint.uri: invalid uri "ftp://x:1": unsupported scheme`},
		{name: "endpoint no port", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://x"}`, wantErr: "no port"},
		{name: "endpoint with path", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://x:1/api"}`, wantErr: "only scheme://host:port"},
		{name: "endpoint zero timeout", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://x:1", timeout: 0}`,
			wantErr: lw + "worker_api_endpoint.timeout: 0 is out of range"},
		{name: "endpoint timeout not a number", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://x:1", timeout: "soon"}`,
			wantErr: lw + `worker_api_endpoint.timeout: want a finite number, got string "soon"`},
		{name: "tls on plaintext uri", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://x:1", tls_config: {use_native_roots: true}}`,
			wantErr: lw + "worker_api_endpoint.tls_config: set, but the uri"},
		{name: "tls without ca", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpcs://x:1", tls_config: {}}`,
			wantErr: lw + "worker_api_endpoint.tls_config.ca_file: required unless use_native_roots"},
		{name: "tls cert without key", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpcs://x:1", tls_config: {ca_file: "/a", cert_file: "/c"}}`,
			wantErr: "cert_file and key_file must be given together"},
		{name: "endpoint token_file", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpcs://s:8443", tls_config: {use_native_roots: true}, token_file: "${WORKER_HOME}/token"}`,
			check: func(t *testing.T, w *LocalWorker, warnings []string) {
				wantEqual(t, "TokenFile", w.WorkerAPIEndpoint.TokenFile, "/home/tester/token")
				wantEqual(t, "warnings", len(warnings), 0)
			}},
		{name: "endpoint token_file on loopback plaintext", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://127.0.0.1:1", token_file: "/t"}`,
			check: func(t *testing.T, w *LocalWorker, warnings []string) {
				wantEqual(t, "warnings", len(warnings), 0)
			}},
		{name: "endpoint token_file in clear text", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://sched:1", token_file: "/t"}`,
			check: func(t *testing.T, w *LocalWorker, warnings []string) {
				if len(warnings) != 1 || !strings.Contains(warnings[0], "worker_api_endpoint.token_file: the token is sent in clear text") {
					t.Errorf("warnings %q, want one about clear text", warnings)
				}
			}},
		{name: "endpoint token_file empty", noBase: true, body: `work_directory: "/tmp/w", worker_api_endpoint: {uri: "grpc://x:1", token_file: ""}`,
			wantErr: lw + "worker_api_endpoint.token_file: is empty"},
		{name: "work_directory cleaned", noBase: true, body: `worker_api_endpoint: {uri: "grpc://x:1"}, work_directory: "/tmp/a/../w/"`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "WorkDirectory", w.WorkDirectory, "/tmp/w")
			}},
		{name: "work_directory expanded", noBase: true, body: `worker_api_endpoint: {uri: "grpc://x:1"}, work_directory: "${WORKER_HOME}/work"`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "WorkDirectory", w.WorkDirectory, "/home/tester/work")
			}},
		{name: "work_directory root", noBase: true, body: `worker_api_endpoint: {uri: "grpc://x:1"}, work_directory: "/"`,
			wantErr: lw + `work_directory: "/" is not a safe work directory`},
		{name: "work_directory dot", noBase: true, body: `worker_api_endpoint: {uri: "grpc://x:1"}, work_directory: "./"`, wantErr: "not a safe work directory"},
		{name: "work_directory missing", noBase: true, body: `worker_api_endpoint: {uri: "grpc://x:1"}`, wantErr: lw + "work_directory: required"},
		{name: "work_directory not a string", noBase: true, body: `worker_api_endpoint: {uri: "grpc://x:1"}, work_directory: ["/w"]`,
			wantErr: lw + "work_directory: want a string, got an array"},
	})
}

func TestTimeoutsAndLimits(t *testing.T) {
	runFieldCases(t, []fieldCase{
		{name: "defaults", body: ``, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxActionTimeout", w.MaxActionTimeout, 20*time.Minute)
			wantEqual(t, "MaxUploadTimeout", w.MaxUploadTimeout, 10*time.Minute)
			wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, testMachine.CPUs)
			wantEqual(t, "TimeoutHandledExternally", w.TimeoutHandledExternally, false)
		}},
		{name: "max_action_timeout seconds", body: `max_action_timeout: 600`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxActionTimeout", w.MaxActionTimeout, 10*time.Minute)
		}},
		{name: "max_action_timeout_s duration string", body: `max_action_timeout_s: "1h 30m"`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxActionTimeout", w.MaxActionTimeout, 90*time.Minute)
		}},
		{name: "max_action_timeout zero means default", body: `max_action_timeout: 0`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxActionTimeout", w.MaxActionTimeout, DefaultMaxActionTimeout)
		}},
		{name: "max_action_timeout both names", body: `max_action_timeout: 1, max_action_timeout_s: 2`,
			wantErr: lw + "max_action_timeout_s: set only one of max_action_timeout and max_action_timeout_s"},
		{name: "max_action_timeout negative", body: `max_action_timeout: -1`, wantErr: lw + "max_action_timeout: -1 seconds is out of range"},
		{name: "max_action_timeout fractional", body: `max_action_timeout: 1.5`, wantErr: lw + "max_action_timeout: want a whole number of seconds"},
		{name: "max_action_timeout bad string", body: `max_action_timeout: "soon"`, wantErr: lw + `max_action_timeout: invalid duration "soon"`},
		{name: "max_upload_timeout string", body: `max_upload_timeout: "90s"`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxUploadTimeout", w.MaxUploadTimeout, 90*time.Second)
		}},
		{name: "max_upload_timeout_s number", body: `max_upload_timeout_s: 30`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxUploadTimeout", w.MaxUploadTimeout, 30*time.Second)
		}},
		{name: "max_upload_timeout bool", body: `max_upload_timeout: true`, wantErr: lw + "max_upload_timeout: want a whole number of seconds or a duration string"},
		{name: "max_inflight_tasks", body: `max_inflight_tasks: 8`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, 8)
		}},
		{name: "max_inflight_tasks from variable", body: `max_inflight_tasks: "$SLOTS"`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, 12)
		}},
		{name: "max_inflight_tasks hex", body: `max_inflight_tasks: 0x10`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, 16)
		}},
		{name: "max_inflight_tasks negative", body: `max_inflight_tasks: -1`, wantErr: lw + "max_inflight_tasks: -1 is out of range (want 0 to 1048576)"},
		{name: "max_inflight_tasks huge", body: `max_inflight_tasks: 1e300`, wantErr: lw + "max_inflight_tasks: 1e300 is too large"},
		{name: "max_inflight_tasks bool", body: `max_inflight_tasks: true`, wantErr: lw + "max_inflight_tasks: want an integer, got boolean true"},
		{name: "timeout_handled_externally", body: `timeout_handled_externally: true`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "TimeoutHandledExternally", w.TimeoutHandledExternally, true)
		}},
		{name: "timeout_handled_externally string", body: `timeout_handled_externally: "yes"`,
			wantErr: lw + `timeout_handled_externally: want true or false, got string "yes"`},
	})
}

func TestCommands(t *testing.T) {
	runFieldCases(t, []fieldCase{
		{name: "entrypoint split", body: `entrypoint: "/opt/wrap.sh --x 'a b' \"c\\\"d\""`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "Entrypoint", w.Entrypoint, []string{"/opt/wrap.sh", "--x", "a b", `c"d`})
		}},
		{name: "entrypoint empty means none", body: `entrypoint: ""`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "Entrypoint", w.Entrypoint, []string(nil))
		}},
		{name: "entrypoint unterminated quote", body: `entrypoint: "/opt/wrap.sh 'oops"`, wantErr: lw + "entrypoint: cannot split"},
		{name: "entrypoint only a comment", body: `entrypoint: "# nothing"`, wantErr: lw + `entrypoint: "# nothing" names no program`},
		{name: "precondition script", body: `experimental_precondition_script: "/opt/ready.sh --min-free $HOME"`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			// Not expanded, as in NativeLink.
			wantEqual(t, "PreconditionScript", w.PreconditionScript, []string{"/opt/ready.sh", "--min-free", "$HOME"})
		}},
		{name: "precondition script bad quoting", body: `experimental_precondition_script: "\"/opt/ready.sh"`, wantErr: lw + "experimental_precondition_script: cannot split"},
		{name: "precondition script number", body: `experimental_precondition_script: 1`, wantErr: lw + "experimental_precondition_script: want a string"},
		{name: "runner_command", body: `runner_command: ["hearth", "run", "--collect-execution-stats"]`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "RunnerCommand", w.RunnerCommand, []string{"hearth", "run", "--collect-execution-stats"})
		}},
		{name: "runner_command empty", body: `runner_command: []`, wantErr: lw + "runner_command: must name a program"},
		{name: "runner_command string", body: `runner_command: "hearth run"`, wantErr: lw + `runner_command: want an array of strings, got string "hearth run"`},
		{name: "runner_command non-string item", body: `runner_command: ["hearth", 1]`, wantErr: lw + "runner_command[1]: want a string, got number 1"},
	})
}

func TestPlatformProperties(t *testing.T) {
	runFieldCases(t, []fieldCase{
		{name: "values and query_cmd", body: `platform_properties: {OSFamily: {values: ["Linux", ""]}, "container-image": {values: ["img-$RACK"]}, cpu_arch: {query_cmd: "uname -m"}}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "PlatformProperties", w.PlatformProperties, map[string]PlatformProperty{
					"OSFamily":        {Values: []string{"Linux", ""}},
					"container-image": {Values: []string{"img-r7"}},
					"cpu_arch":        {QueryCmd: []string{"uname", "-m"}},
				})
			}},
		{name: "empty values warn", body: `platform_properties: {gpu: {values: []}}`, check: func(t *testing.T, _ *LocalWorker, warnings []string) {
			wantWarning(t, warnings, lw+"platform_properties.gpu.values: empty")
		}},
		{name: "both kinds", body: `platform_properties: {a: {values: ["x"], query_cmd: "true"}}`,
			wantErr: lw + "platform_properties.a: want an object with exactly one of the keys values, query_cmd, got keys query_cmd, values"},
		{name: "no kind", body: `platform_properties: {a: {}}`, wantErr: lw + "platform_properties.a: want an object with exactly one of the keys values, query_cmd, got an empty object"},
		{name: "unknown kind", body: `platform_properties: {a: {value: ["x"]}}`, wantErr: lw + "platform_properties.a.value: unknown field (want exactly one of values, query_cmd)"},
		{name: "values not array", body: `platform_properties: {a: {values: "x"}}`, wantErr: lw + `platform_properties.a.values: want an array of strings, got string "x"`},
		{name: "value not string", body: `platform_properties: {a: {values: ["x", 2]}}`, wantErr: lw + "platform_properties.a.values[1]: want a string, got number 2"},
		{name: "query_cmd bad quoting", body: `platform_properties: {a: {query_cmd: "sh -c 'x"}}`, wantErr: lw + "platform_properties.a.query_cmd: cannot split"},
		{name: "query_cmd empty", body: `platform_properties: {a: {query_cmd: ""}}`, wantErr: lw + `platform_properties.a.query_cmd: "" names no program`},
		{name: "quoted name in path", body: `platform_properties: {"my prop": {values: 1}}`, wantErr: lw + `platform_properties["my prop"].values: want an array`},
		{name: "not an object", body: `platform_properties: ["a"]`, wantErr: lw + "platform_properties: want an object mapping property names"},
	})
}

func TestAdditionalEnvironment(t *testing.T) {
	runFieldCases(t, []fieldCase{
		{name: "every source", body: `additional_environment: {
				A: "from_environment", B: {value: "v-$RACK"}, C: {property: "container-image"},
				D: "timeout_millis", E: "side_channel_file", F: "action_directory", G: {from_environment: "WORKER_HOME"}}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "AdditionalEnvironment", w.AdditionalEnvironment, map[string]EnvironmentSource{
					"A": {Kind: EnvFromEnvironment, Variable: "A"},
					"B": {Kind: EnvValue, Value: "v-r7"},
					"C": {Kind: EnvProperty, Property: "container-image"},
					"D": {Kind: EnvTimeoutMillis},
					"E": {Kind: EnvSideChannelFile},
					"F": {Kind: EnvActionDirectory},
					"G": {Kind: EnvFromEnvironment, Variable: "WORKER_HOME"},
				})
				wantEqual(t, "StaticEnvironment", w.StaticEnvironment(testLookup), map[string]string{"A": "", "B": "v-r7", "G": "/home/tester"})
			}},
		{name: "unknown unit source", body: `additional_environment: {A: "sometimes"}`, wantErr: lw + `additional_environment.A: unknown value "sometimes" (want "from_environment"`},
		{name: "newtype name as string", body: `additional_environment: {A: "value"}`, wantErr: lw + `additional_environment.A: unknown value "value"`},
		{name: "value not a string", body: `additional_environment: {A: {value: 1}}`, wantErr: lw + "additional_environment.A.value: want a string, got number 1"},
		{name: "two sources", body: `additional_environment: {A: {value: "x", property: "y"}}`, wantErr: lw + "additional_environment.A: want an object with exactly one of the keys value, property, from_environment"},
		{name: "unknown source key", body: `additional_environment: {A: {timeout_millis: 1}}`, wantErr: lw + "additional_environment.A.timeout_millis: unknown field"},
		{name: "empty property", body: `additional_environment: {A: {property: ""}}`, wantErr: lw + "additional_environment.A.property: must name a platform property"},
		{name: "bad variable name", body: `additional_environment: {"A=B": "timeout_millis"}`, wantErr: lw + `additional_environment["A=B"]: "A=B" is not a valid environment variable name`},
		{name: "bad source variable", body: `additional_environment: {A: {from_environment: ""}}`, wantErr: lw + `additional_environment.A.from_environment: "" is not a valid`},
		{name: "source is a number", body: `additional_environment: {A: 3}`, wantErr: lw + "additional_environment.A: want \"from_environment\""},
	})
}

func TestUploadActionResult(t *testing.T) {
	cases := []fieldCase{
		{name: "default strategy", body: ``, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "strategy", w.UploadActionResult.UploadACResultsStrategy, UploadSuccessOnly)
			wantEqual(t, "success template empty", w.UploadActionResult.SuccessMessageTemplate.IsEmpty(), true)
		}},
		{name: "unknown strategy", body: `upload_action_result: {upload_ac_results_strategy: "sometimes"}`,
			wantErr: `workers[0].local.upload_action_result.upload_ac_results_strategy: unknown value "sometimes" (want success_only, never, everything, failures_only)`},
		{name: "strategy not a string", body: `upload_action_result: {upload_ac_results_strategy: 1}`,
			wantErr: lw + "upload_action_result.upload_ac_results_strategy: want one of success_only, never, everything, failures_only, got number 1"},
		{name: "templates", body: `upload_action_result: {success_message_template: "ok {digest_function}/{action_digest_hash}-{action_digest_size}", failure_message_template: "{{x}} {action_digest_hash}"}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				v := TemplateValues{DigestFunction: "sha256", ActionDigestHash: "abc", ActionDigestSize: 42}
				wantEqual(t, "success", w.UploadActionResult.SuccessMessageTemplate.Expand(v), "ok sha256/abc-42")
				wantEqual(t, "failure", w.UploadActionResult.FailureMessageTemplate.Expand(v), "{x} abc")
			}},
		{name: "template unknown variable", body: `upload_action_result: {failure_message_template: "{action_hash}"}`,
			wantErr: lw + "upload_action_result.failure_message_template: unknown template variable {action_hash}"},
		{name: "template historical warns", body: `upload_action_result: {failure_message_template: "{historical_results_hash}"}`,
			check: func(t *testing.T, w *LocalWorker, warnings []string) {
				wantWarning(t, warnings, lw+"upload_action_result.failure_message_template: Hearth does not upload historical results")
				wantEqual(t, "expanded", w.UploadActionResult.FailureMessageTemplate.Expand(TemplateValues{}), "")
			}},
		{name: "NativeLink store fields warn", body: `upload_action_result: {ac_store: "AC", historical_results_store: "CAS", upload_historical_results_strategy: "never"}`,
			check: func(t *testing.T, _ *LocalWorker, warnings []string) {
				wantWarning(t, warnings, lw+"upload_action_result.ac_store: ignored")
				wantWarning(t, warnings, lw+"upload_action_result.historical_results_store: ignored")
				wantWarning(t, warnings, lw+"upload_action_result.upload_historical_results_strategy: ignored")
			}},
		{name: "bad historical strategy", body: `upload_action_result: {upload_historical_results_strategy: "often"}`,
			wantErr: lw + `upload_action_result.upload_historical_results_strategy: unknown value "often"`},
		{name: "ac_store not a string", body: `upload_action_result: {ac_store: {}}`, wantErr: lw + "upload_action_result.ac_store: want a string"},
	}
	for i, name := range uploadStrategyNames {
		cases = append(cases, fieldCase{name: "strategy " + name, body: `upload_action_result: {upload_ac_results_strategy: "` + name + `"}`,
			check: func(t *testing.T, w *LocalWorker, _ []string) {
				wantEqual(t, "strategy", w.UploadActionResult.UploadACResultsStrategy, UploadStrategy(i))
				wantEqual(t, "String", w.UploadActionResult.UploadACResultsStrategy.String(), name)
			}})
	}
	runFieldCases(t, cases)
}

func TestDirectoryCache(t *testing.T) {
	runFieldCases(t, []fieldCase{
		{name: "absent means disabled", body: ``, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "DirectoryCache", w.DirectoryCache, (*DirectoryCache)(nil))
		}},
		{name: "defaults", body: `directory_cache: {}`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "DirectoryCache", w.DirectoryCache, &DirectoryCache{
				MaxEntries: 1000, MaxSizeBytes: 10 << 30, CacheRoot: "/tmp/hearth-config-test/directory_cache"})
		}},
		{name: "set", body: `directory_cache: {max_entries: 10, max_size_bytes: "1.5GiB", cache_root: "/cache/dirs"}`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "DirectoryCache", w.DirectoryCache, &DirectoryCache{MaxEntries: 10, MaxSizeBytes: 3 << 29, CacheRoot: "/cache/dirs"})
		}},
		{name: "unlimited size", body: `directory_cache: {max_size_bytes: 0}`, check: func(t *testing.T, w *LocalWorker, _ []string) {
			wantEqual(t, "MaxSizeBytes", w.DirectoryCache.MaxSizeBytes, uint64(0))
		}},
		{name: "max_entries zero", body: `directory_cache: {max_entries: 0}`, wantErr: lw + "directory_cache.max_entries: 0 is out of range"},
		{name: "bad size", body: `directory_cache: {max_size_bytes: "lots"}`, wantErr: lw + `directory_cache.max_size_bytes: invalid size "lots"`},
		{name: "negative size", body: `directory_cache: {max_size_bytes: -1}`, wantErr: lw + "directory_cache.max_size_bytes: want a non-negative whole number of bytes"},
		{name: "cache inside work directory", body: `directory_cache: {cache_root: "/tmp/hearth-config-test/work/cache"}`,
			wantErr: lw + `directory_cache.cache_root: "/tmp/hearth-config-test/work/cache" overlaps work_directory`},
		{name: "NativeLink-only fields warn", body: `directory_cache: {experimental_subtree_caching: true, max_concurrent_fetches: 64, experimental_get_tree_prefetch: false}`,
			check: func(t *testing.T, _ *LocalWorker, warnings []string) {
				wantWarning(t, warnings, lw+"directory_cache.experimental_subtree_caching: ignored")
				wantWarning(t, warnings, lw+"directory_cache.max_concurrent_fetches: ignored")
				wantWarning(t, warnings, lw+"directory_cache.experimental_get_tree_prefetch: ignored")
			}},
		{name: "max_concurrent_fetches zero", body: `directory_cache: {max_concurrent_fetches: 0}`, wantErr: lw + "directory_cache.max_concurrent_fetches: 0 is out of range"},
	})
}

func TestNativeLinkOnlyLocalFields(t *testing.T) {
	runFieldCases(t, []fieldCase{
		{name: "accepted with warnings", body: `cas_fast_slow_store: "WORKER_FAST_SLOW_STORE", max_cleanup_wait_s: 30, max_cleanup_backoff_ms: 500,
				experimental_active_input_leases: true, use_namespaces: false, use_mount_namespace: false`,
			check: func(t *testing.T, _ *LocalWorker, warnings []string) {
				wantWarning(t, warnings, lw+"cas_fast_slow_store: ignored")
				wantWarning(t, warnings, lw+"max_cleanup_wait_s: ignored")
				wantWarning(t, warnings, lw+"max_cleanup_backoff_ms: ignored")
				wantWarning(t, warnings, lw+"experimental_active_input_leases: ignored")
			}},
		{name: "cas_fast_slow_store not a string", body: `cas_fast_slow_store: 1`, wantErr: lw + "cas_fast_slow_store: want a string"},
		{name: "use_namespaces true", body: `use_namespaces: true`, wantErr: lw + "use_namespaces: Hearth does not run actions in Linux namespaces"},
		{name: "use_mount_namespace true", body: `use_mount_namespace: true`, wantErr: lw + "use_mount_namespace: Hearth does not run actions"},
		{name: "use_namespaces not bool", body: `use_namespaces: "yes"`, wantErr: lw + "use_namespaces: want true or false"},
	})
}
