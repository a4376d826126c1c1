package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/titanous/json5"
)

// nativeLinkTopLevel are the sections of a NativeLink config besides
// workers. A NativeLink worker host's config usually carries them (the
// worker's fast_slow store, a health server); Hearth ignores them with a
// warning instead of rejecting them so such a config loads unchanged, and
// says so because a user might expect, say, its servers to be started.
var nativeLinkTopLevel = map[string]string{
	"stores":                     "Hearth workers use the CAS and action cache of the worker_api_endpoint server",
	"schedulers":                 "the scheduler runs in the Hearth server, not in the worker",
	"servers":                    "a Hearth worker serves nothing; configure servers in the Hearth server",
	"global":                     "a Hearth worker sizes its file limits itself",
	"experimental_origin_events": "not implemented by Hearth",
}

// requiredLocalFields are the local worker fields a worker file must set,
// with the message given when one is missing.
var requiredLocalFields = map[string]string{
	"worker_api_endpoint": `required (for example {uri: "grpc://scheduler:50061"})`,
	"work_directory":      "required: the directory actions run in (purged at start)",
}

// Load reads and parses the worker configuration file at path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading worker config: %w", err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Parse parses a JSON5 worker configuration, validates it and applies the
// defaults for this machine (DetectMachine). Strings may refer to the
// process environment as $VAR, ${VAR} or ${VAR:-default}.
func Parse(data []byte) (*File, error) {
	return parse(data, DetectMachine(), os.LookupEnv, false)
}

// ParseEmbedded parses the configuration of `hearth serve`: the same file,
// whose workers run inside the server, so worker_api_endpoint is optional
// (and unused: they reach the scheduler in-process).
func ParseEmbedded(data []byte) (*File, error) {
	return parse(data, DetectMachine(), os.LookupEnv, true)
}

func parse(data []byte, m Machine, lookupEnv func(string) (string, bool), embedded bool) (*File, error) {
	root, err := decodeJSON5(data)
	if err != nil {
		return nil, err
	}
	d := &decoder{lookupEnv: lookupEnv, embedded: embedded}
	f := &File{}
	o, ok := d.object("", root)
	if !ok {
		return nil, d.err()
	}
	if v, p, ok := o.get("workers"); ok {
		f.Workers = d.workers(p, v)
	} else {
		d.errorf("workers", "required: list at least one worker, e.g. workers: [{local: {...}}]")
	}
	for _, key := range sortedKeys(nativeLinkTopLevel) {
		if _, p, ok := o.get(key); ok {
			d.warnf(p, "ignored: %s", nativeLinkTopLevel[key])
		}
	}
	o.rejectUnknown()
	if err := d.err(); err != nil {
		return nil, err
	}
	var errs []error
	for i := range f.Workers {
		w := &f.Workers[i].Local
		w.ApplyDefaults(m)
		if err := w.validate(fieldPath(indexPath("workers", i), "local"), !embedded); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, checkDistinctWorkDirectories(f.Workers)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	f.Warnings = d.warnings
	return f, nil
}

func (d *decoder) workers(path string, v any) []Worker {
	items, ok := v.([]any)
	if !ok {
		d.errorf(path, "want an array of workers, got %s", describe(v))
		return nil
	}
	if len(items) == 0 {
		d.errorf(path, "must list at least one worker")
		return nil
	}
	workers := make([]Worker, 0, len(items))
	for i, item := range items {
		p := indexPath(path, i)
		kind, arg, ok := d.variant(p, item, []string{"local"})
		if !ok {
			continue
		}
		lp := fieldPath(p, kind)
		workers = append(workers, Worker{Local: d.localWorker(lp, arg)})
		// Checked here as well as in Validate so that a missing field is
		// reported together with every other problem of the file.
		if m, ok := arg.(map[string]any); ok {
			for _, key := range sortedKeys(requiredLocalFields) {
				if m[key] == nil && !(d.embedded && key == "worker_api_endpoint") {
					d.errorf(fieldPath(lp, key), "%s", requiredLocalFields[key])
				}
			}
		}
	}
	return workers
}

// ParseLocalWorker parses a JSON5 text holding one local worker object (the
// value of "local"), for configs other than the worker file. Unlike Parse it
// neither applies defaults nor requires worker_api_endpoint and
// work_directory: the embedding program may supply them, then call
// ApplyDefaults and Validate. The strings returned are warnings.
func ParseLocalWorker(data []byte) (*LocalWorker, []string, error) {
	v, err := decodeJSON5(data)
	if err != nil {
		return nil, nil, err
	}
	return DecodeLocalWorker("", v)
}

// DecodeLocalWorker is ParseLocalWorker for a value that the caller already
// decoded from JSON5 (maps, slices, strings, bools, json5.Number or float64
// numbers). path prefixes every error, e.g. "executor".
func DecodeLocalWorker(path string, v any) (*LocalWorker, []string, error) {
	d := &decoder{lookupEnv: os.LookupEnv}
	w := d.localWorker(path, v)
	if err := d.err(); err != nil {
		return nil, nil, err
	}
	return &w, d.warnings, nil
}

// Validate checks what can only be checked once defaults are applied: the
// required fields, and that the purged work directory and the directory
// cache do not contain each other. path names the worker in errors.
func (w *LocalWorker) Validate(path string) error { return w.validate(path, true) }

// maxSocketPath is Linux's limit on a Unix socket path (sun_path holds 108
// bytes with the NUL).
const maxSocketPath = 107

func (w *LocalWorker) validate(path string, needEndpoint bool) error {
	var errs []error
	fail := func(p, format string, args ...any) {
		errs = append(errs, &FieldError{Path: p, Msg: fmt.Sprintf(format, args...)})
	}
	if needEndpoint && w.WorkerAPIEndpoint.URI == "" {
		fail(fieldPath(path, "worker_api_endpoint"), "%s", requiredLocalFields["worker_api_endpoint"])
	}
	if w.WorkDirectory == "" {
		fail(fieldPath(path, "work_directory"), "%s", requiredLocalFields["work_directory"])
	}
	if n := len(w.LocalCASSocket); n > maxSocketPath {
		fail(fieldPath(path, "localcas_socket"), "%q is %d bytes, longer than the %d a Unix socket path allows", w.LocalCASSocket, n, maxSocketPath)
	}
	if c := w.DirectoryCache; c != nil && w.WorkDirectory != "" && c.CacheRoot != "" {
		if overlaps(c.CacheRoot, w.WorkDirectory) {
			fail(fieldPath(fieldPath(path, "directory_cache"), "cache_root"),
				"%q overlaps work_directory %q, which is purged at start", c.CacheRoot, w.WorkDirectory)
		}
	}
	return errors.Join(errs...)
}

// checkDistinctWorkDirectories rejects two workers sharing a work directory:
// each purges it at start and would delete the other's running actions.
func checkDistinctWorkDirectories(workers []Worker) []error {
	var errs []error
	for i := range workers {
		for j := 0; j < i; j++ {
			a, b := workers[i].Local.WorkDirectory, workers[j].Local.WorkDirectory
			if a != "" && b != "" && overlaps(a, b) {
				errs = append(errs, &FieldError{
					Path: fieldPath(fieldPath(indexPath("workers", i), "local"), "work_directory"),
					Msg:  fmt.Sprintf("%q overlaps the work_directory %q of workers[%d]; each worker purges its own", a, b, j),
				})
			}
		}
	}
	return errs
}

// overlaps reports whether one of the directories is, or is inside, the other.
func overlaps(a, b string) bool {
	a, errA := filepath.Abs(a)
	b, errB := filepath.Abs(b)
	if errA != nil || errB != nil {
		return a == b
	}
	within := func(child, parent string) bool {
		rel, err := filepath.Rel(parent, child)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
	}
	return within(a, b) || within(b, a)
}

// decodeJSON5 decodes one JSON5 value (comments, trailing commas, unquoted
// keys, single quotes, hex numbers) into generic values, numbers kept exact
// as json5.Number, and rejects anything after it but blanks and comments.
func decodeJSON5(data []byte) (any, error) {
	data = bytes.TrimPrefix(data, []byte("\uFEFF"))
	if onlyBlanksAndComments(data) {
		return nil, &FieldError{Msg: "the configuration is empty"}
	}
	r := bytes.NewReader(data)
	dec := json5.NewDecoder(r)
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		var se *json5.SyntaxError
		switch {
		case errors.As(err, &se):
			line, col := lineCol(data, int(se.Offset)-1)
			return nil, &FieldError{Msg: fmt.Sprintf("JSON5 syntax error at line %d, column %d: %s", line, col, se.Error())}
		case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
			return nil, &FieldError{Msg: "JSON5 syntax error: unexpected end of file (an object or array is not closed)"}
		default:
			return nil, &FieldError{Msg: "JSON5 syntax error: " + err.Error()}
		}
	}
	// The decoder may have read past the value: what it buffered and what
	// it never read together are the rest of the file.
	rest, _ := io.ReadAll(io.MultiReader(dec.Buffered(), r))
	consumed := len(data) - len(rest)
	if !onlyBlanksAndComments(rest) {
		line, col := lineCol(data, consumed+len(rest)-len(bytes.TrimLeftFunc(rest, unicode.IsSpace)))
		return nil, &FieldError{Msg: fmt.Sprintf("JSON5 syntax error at line %d, column %d: unexpected text after the top-level value", line, col)}
	}
	return v, nil
}

func lineCol(data []byte, offset int) (line, col int) {
	offset = max(0, min(offset, len(data)))
	before := data[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = utf8.RuneCount(before[bytes.LastIndexByte(before, '\n')+1:]) + 1
	return line, col
}

// onlyBlanksAndComments reports whether b holds nothing but JSON5 white
// space and comments.
func onlyBlanksAndComments(b []byte) bool {
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case unicode.IsSpace(r) || r == '\uFEFF':
			b = b[n:]
		case bytes.HasPrefix(b, []byte("//")):
			end := bytes.IndexByte(b, '\n')
			if end < 0 {
				return true
			}
			b = b[end+1:]
		case bytes.HasPrefix(b, []byte("/*")):
			end := bytes.Index(b[2:], []byte("*/"))
			if end < 0 {
				return false
			}
			b = b[2+end+2:]
		default:
			return false
		}
	}
	return true
}
