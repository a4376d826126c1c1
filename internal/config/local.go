package config

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Defaults that do not depend on the machine. NativeLink's where it has one.
const (
	DefaultMaxActionTimeout = 20 * time.Minute
	DefaultMaxUploadTimeout = 10 * time.Minute
	DefaultEndpointTimeout  = 5 * time.Second
	DefaultIdleTimeout      = 15 * time.Minute

	DefaultDirectoryCacheMaxEntries   = 1000
	DefaultDirectoryCacheMaxSizeBytes = 10 << 30
)

// maxInflightLimit keeps max_inflight_tasks to something a process could
// actually run; larger values are typos.
const maxInflightLimit = 1 << 20

// NewLocalWorker returns a LocalWorker with the defaults that must be set
// before decoding because their zero value means something else (enabled:
// false, idle_timeout_s: 0 = never).
func NewLocalWorker() LocalWorker {
	return LocalWorker{PersistentWorkers: PersistentWorkers{Enabled: true, IdleTimeout: DefaultIdleTimeout}}
}

// localWorker decodes one "local" object. Required fields are checked by the
// caller: an embedding config (hearth serve) may supply them itself.
func (d *decoder) localWorker(path string, v any) LocalWorker {
	w := NewLocalWorker()
	o, ok := d.object(path, v)
	if !ok {
		return w
	}
	if v, p, ok := o.get("name"); ok {
		w.Name, _ = d.str(p, v)
	}
	if v, p, ok := o.get("worker_api_endpoint"); ok {
		w.WorkerAPIEndpoint = d.endpoint(p, v)
	}
	if v, p, ok := o.get("work_directory"); ok {
		w.WorkDirectory = d.workDirectory(p, v)
	}
	if v, p, ok := o.get("localcas_socket"); ok {
		w.LocalCASSocket, _ = d.str(p, v)
	}
	if v, p, ok := o.get("platform_properties"); ok {
		w.PlatformProperties = d.platformProperties(p, v)
	}
	w.MaxActionTimeout = d.aliasedSeconds(o, "max_action_timeout", "max_action_timeout_s")
	w.MaxUploadTimeout = d.aliasedSeconds(o, "max_upload_timeout", "max_upload_timeout_s")
	if v, p, ok := o.get("max_inflight_tasks"); ok {
		n, _ := d.integer(p, v, 0, maxInflightLimit)
		w.MaxInflightTasks = int(n)
	}
	if v, p, ok := o.get("timeout_handled_externally"); ok {
		w.TimeoutHandledExternally, _ = d.boolean(p, v)
	}
	if v, p, ok := o.get("entrypoint"); ok {
		if s, ok := d.str(p, v); ok && strings.TrimSpace(s) != "" {
			w.Entrypoint = d.words(p, s)
		}
	}
	if v, p, ok := o.get("experimental_precondition_script"); ok {
		// NativeLink does not expand variables here; neither does Hearth.
		if s, ok := d.rawString(p, v); ok && strings.TrimSpace(s) != "" {
			w.PreconditionScript = d.words(p, s)
		}
	}
	if v, p, ok := o.get("additional_environment"); ok {
		w.AdditionalEnvironment = d.additionalEnvironment(p, v)
	}
	if v, p, ok := o.get("upload_action_result"); ok {
		w.UploadActionResult = d.uploadActionResult(p, v)
	}
	if v, p, ok := o.get("directory_cache"); ok {
		w.DirectoryCache = d.directoryCache(p, v)
	}
	if v, p, ok := o.get("persistent_workers"); ok {
		d.persistentWorkers(p, v, &w.PersistentWorkers)
	}
	if v, p, ok := o.get("sandbox"); ok {
		i, _ := d.enum(p, v, sandboxNames)
		w.Sandbox = SandboxKind(i)
	}
	if v, p, ok := o.get("runner_command"); ok {
		if argv, ok := d.strList(p, v, true); ok {
			if len(argv) == 0 || argv[0] == "" {
				d.errorf(p, "must name a program (omit runner_command to run actions in-process)")
			} else {
				w.RunnerCommand = argv
			}
		}
	}
	d.nativeLinkOnlyLocalFields(o)
	o.rejectUnknown()
	return w
}

// nativeLinkOnlyLocalFields accepts the LocalWorkerConfig fields that have
// no effect in Hearth, checking their types so a typo still shows.
func (d *decoder) nativeLinkOnlyLocalFields(o *object) {
	if v, p, ok := o.get("cas_fast_slow_store"); ok {
		if _, ok := d.str(p, v); ok {
			d.warnf(p, "ignored: Hearth workers fetch inputs from the CAS of the worker_api_endpoint server through their own local cache")
		}
	}
	if v, p, ok := o.get("max_cleanup_wait_s"); ok {
		if _, ok := d.seconds(p, v); ok {
			d.warnf(p, "ignored: Hearth removes an action's directory before reporting it done")
		}
	}
	if v, p, ok := o.get("max_cleanup_backoff_ms"); ok {
		if _, ok := d.integer(p, v, 0, math.MaxInt64); ok {
			d.warnf(p, "ignored: Hearth removes an action's directory before reporting it done")
		}
	}
	if v, p, ok := o.get("experimental_active_input_leases"); ok {
		if _, ok := d.boolean(p, v); ok {
			d.warnf(p, "ignored: Hearth's file cache never evicts the inputs of a running action")
		}
	}
	for _, key := range []string{"use_namespaces", "use_mount_namespace"} {
		if v, p, ok := o.get(key); ok {
			if b, ok := d.boolean(p, v); ok && b {
				// NativeLink exits when namespaces are asked for but
				// unavailable; running without them silently would be worse.
				d.errorf(p, "Hearth does not run actions in Linux namespaces; remove it, or isolate actions with entrypoint or runner_command")
			}
		}
	}
}

// aliasedSeconds reads a duration that NativeLink accepts under two names
// (max_action_timeout_s, with max_action_timeout as its alias).
func (d *decoder) aliasedSeconds(o *object, name, alias string) time.Duration {
	v1, p1, ok1 := o.get(name)
	v2, p2, ok2 := o.get(alias)
	switch {
	case ok1 && ok2:
		d.errorf(p2, "set only one of %s and %s (they are the same setting)", name, alias)
	case ok1:
		dur, _ := d.seconds(p1, v1)
		return dur
	case ok2:
		dur, _ := d.seconds(p2, v2)
		return dur
	}
	return 0
}

// workDirectory checks the directory that the worker purges at start, so a
// slip such as "/" or "." cannot wipe something precious.
func (d *decoder) workDirectory(path string, v any) string {
	s, ok := d.str(path, v)
	if !ok {
		return ""
	}
	clean := filepath.Clean(s)
	switch {
	case s == "":
		d.errorf(path, "must not be empty")
	case clean == "/" || clean == "." || clean == ".." || strings.HasPrefix(clean, "../"):
		d.errorf(path, "%q is not a safe work directory: it is deleted at start", s)
	default:
		return clean
	}
	return ""
}

// words splits a command line with shell quoting rules (as NativeLink's
// shlex does) without running a shell.
func (d *decoder) words(path, s string) []string {
	argv, err := splitWords(s)
	if err != nil {
		d.errorf(path, "%v", err)
		return nil
	}
	if len(argv) == 0 {
		d.errorf(path, "%q names no program", s)
		return nil
	}
	return argv
}

// platformProperties decodes `name: {values: [...]}` or `name: {query_cmd:
// "..."}` entries: serde's encoding of NativeLink's WorkerProperty enum.
func (d *decoder) platformProperties(path string, v any) map[string]PlatformProperty {
	m, ok := v.(map[string]any)
	if !ok {
		d.errorf(path, "want an object mapping property names to {values: [...]} or {query_cmd: \"...\"}, got %s", describe(v))
		return nil
	}
	props := make(map[string]PlatformProperty, len(m))
	for _, name := range sortedKeys(m) {
		p := fieldPath(path, name)
		if strings.TrimSpace(name) == "" {
			d.errorf(p, "property name must not be empty")
			continue
		}
		kind, arg, ok := d.variant(p, m[name], []string{"values", "query_cmd"})
		if !ok {
			continue
		}
		argPath := fieldPath(p, kind)
		switch kind {
		case "values":
			values, ok := d.strList(argPath, arg, true)
			if !ok {
				continue
			}
			if len(values) == 0 {
				d.warnf(argPath, "empty: the property is not advertised")
			}
			props[name] = PlatformProperty{Values: values}
		case "query_cmd":
			if s, ok := d.rawString(argPath, arg); ok {
				if argv := d.words(argPath, s); argv != nil {
					props[name] = PlatformProperty{QueryCmd: argv}
				}
			}
		}
	}
	return props
}

// variant decodes serde's externally tagged newtype variant: an object with
// exactly one key, which must be one of kinds.
func (d *decoder) variant(path string, v any, kinds []string) (kind string, arg any, ok bool) {
	want := strings.Join(kinds, ", ")
	m, isObj := v.(map[string]any)
	if !isObj || len(m) != 1 {
		d.errorf(path, "want an object with exactly one of the keys %s, got %s", want, describeShape(v))
		return "", nil, false
	}
	for k, a := range m {
		kind, arg = k, a
	}
	if !slices.Contains(kinds, kind) {
		d.errorf(fieldPath(path, kind), "unknown field (want exactly one of %s)", want)
		return "", nil, false
	}
	if arg == nil {
		d.errorf(fieldPath(path, kind), "must not be null")
		return "", nil, false
	}
	return kind, arg, true
}

func describeShape(v any) string {
	if m, ok := v.(map[string]any); ok {
		if len(m) == 0 {
			return "an empty object"
		}
		return "keys " + strings.Join(sortedKeys(m), ", ")
	}
	return describe(v)
}

// additionalEnvironment decodes NativeLink's EnvironmentSource map. Unit
// variants are plain strings ("timeout_millis"); newtype variants are
// one-key objects ({value: "x"}).
func (d *decoder) additionalEnvironment(path string, v any) map[string]EnvironmentSource {
	m, ok := v.(map[string]any)
	if !ok {
		d.errorf(path, "want an object mapping variable names to sources, got %s", describe(v))
		return nil
	}
	env := make(map[string]EnvironmentSource, len(m))
	for _, name := range sortedKeys(m) {
		p := fieldPath(path, name)
		if name == "" || strings.ContainsAny(name, "=\x00") {
			d.errorf(p, "%q is not a valid environment variable name", name)
			continue
		}
		if src, ok := d.environmentSource(p, name, m[name]); ok {
			env[name] = src
		}
	}
	return env
}

var unitEnvSources = map[string]EnvSourceKind{
	"from_environment":  EnvFromEnvironment,
	"timeout_millis":    EnvTimeoutMillis,
	"side_channel_file": EnvSideChannelFile,
	"action_directory":  EnvActionDirectory,
}

const envSourceChoices = `"from_environment", "timeout_millis", "side_channel_file", "action_directory", {value: "..."}, {property: "..."} or {from_environment: "VAR"}`

func (d *decoder) environmentSource(path, name string, v any) (EnvironmentSource, bool) {
	if s, isStr := v.(string); isStr {
		kind, ok := unitEnvSources[s]
		if !ok {
			d.errorf(path, "unknown value %q (want %s)", s, envSourceChoices)
			return EnvironmentSource{}, false
		}
		src := EnvironmentSource{Kind: kind}
		if kind == EnvFromEnvironment {
			src.Variable = name
		}
		return src, true
	}
	if _, isObj := v.(map[string]any); !isObj {
		d.errorf(path, "want %s, got %s", envSourceChoices, describe(v))
		return EnvironmentSource{}, false
	}
	kind, arg, ok := d.variant(path, v, []string{"value", "property", "from_environment"})
	if !ok {
		return EnvironmentSource{}, false
	}
	argPath := fieldPath(path, kind)
	switch kind {
	case "value":
		s, ok := d.str(argPath, arg)
		if ok && strings.ContainsRune(s, 0) {
			d.errorf(argPath, "must not contain a NUL byte")
			ok = false
		}
		return EnvironmentSource{Kind: EnvValue, Value: s}, ok
	case "property":
		s, ok := d.rawString(argPath, arg)
		if ok && s == "" {
			d.errorf(argPath, "must name a platform property")
			ok = false
		}
		return EnvironmentSource{Kind: EnvProperty, Property: s}, ok
	default: // from_environment with an explicit variable: a Hearth extension.
		s, ok := d.rawString(argPath, arg)
		if ok && (s == "" || strings.ContainsAny(s, "=\x00")) {
			d.errorf(argPath, "%q is not a valid environment variable name", s)
			ok = false
		}
		return EnvironmentSource{Kind: EnvFromEnvironment, Variable: s}, ok
	}
}
