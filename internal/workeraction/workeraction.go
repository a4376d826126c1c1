// Package workeraction owns the translation of a REAPI action into a
// persistent worker request, following Bazel's rules so that any Bazel or
// Buck2 worker behaves remotely as it does locally: which platform
// properties opt an action in (hints, never requirements), how the argv is
// split into startup arguments and flag files, how flag files are expanded
// into WorkRequest.arguments, and which pool key a worker process is shared
// under.
package workeraction

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/inputtree"
)

// Hints are what the client's platform properties say about running the
// action on a persistent worker.
type Hints struct {
	// OptIn: persistentWorkerKey is present (Bazel ≥ 6, Buck2) or
	// supports-workers=1 was set through exec_properties.
	OptIn bool
	// ClientKey is persistentWorkerKey's value ("" when absent). Hearth
	// never trusts it alone; it is one input of the pool key.
	ClientKey string
	// Protocol is "proto" (default) or "json".
	Protocol string
	// Multiplex: supports-multiplex-workers=1.
	Multiplex bool
	// Sandboxing: supports-multiplex-sandboxing=1 (multiplex requests get
	// their own sandbox_dir).
	Sandboxing bool
	// Cancellable: supports-worker-cancellation=1.
	Cancellable bool
}

// ParseHints reads the worker hints from an action's platform properties. An
// unknown protocol name returns an error: the caller runs the action one-shot
// rather than guessing.
func ParseHints(props []*repb.Platform_Property) (Hints, error) {
	h := Hints{Protocol: "proto"}
	for _, p := range props {
		v := p.GetValue()
		switch p.GetName() {
		case "persistentWorkerKey":
			h.OptIn, h.ClientKey = true, v
		case "supports-workers":
			h.OptIn = h.OptIn || v == "1" || strings.EqualFold(v, "true")
		case "persistentWorkerProtocol", "requires-worker-protocol":
			h.Protocol = strings.ToLower(v)
		case "supports-multiplex-workers":
			h.Multiplex = v == "1" || strings.EqualFold(v, "true")
		case "supports-multiplex-sandboxing":
			h.Sandboxing = v == "1" || strings.EqualFold(v, "true")
		case "supports-worker-cancellation":
			h.Cancellable = v == "1" || strings.EqualFold(v, "true")
		}
	}
	if h.Protocol != "proto" && h.Protocol != "json" {
		return h, fmt.Errorf("unknown worker protocol %q (want proto or json)", h.Protocol)
	}
	if !h.Multiplex {
		h.Sandboxing = false
	}
	return h, nil
}

// lineTerminators are what Java's "." does not match (Pattern without
// DOTALL or UNIX_LINES); Bazel's patterns below are Java regular expressions
// applied with matches(), that is to the whole argument.
const lineTerminators = `\n\r\x{85}\x{2028}\x{2029}`

// flagFileArg is Bazel's rule for a flag-file argument (WorkerParser's
// FLAG_FILE_PATTERN, "(?:@|--?flagfile=)(.+)", matched in full).
var flagFileArg = regexp.MustCompile(`\A(?:@|--?flagfile=)[^` + lineTerminators + `]+\z`)

// externalLabel is Bazel's rule for an argument that names a target of an
// external repository (@repo//pkg:x) rather than a flag file
// (WorkerSpawnRunner's isExternalRepositoryLabel, "^@.*//.*" matched in
// full). Such an argument counts as a flag file when the argv is split, but
// it is passed to the worker as it is, never read.
var externalLabel = regexp.MustCompile(`\A@[^` + lineTerminators + `]*//[^` + lineTerminators + `]*\z`)

// SplitArgs splits a Command's arguments as Bazel does: every flag-file
// argument (@file, --flagfile=file, -flagfile=file; anywhere, any number)
// goes to the request, everything else, in order, is the startup command.
// With no flag-file argument the action cannot be a worker request.
func SplitArgs(args []string) (startup, request []string) {
	for _, a := range args {
		if flagFileArg.MatchString(a) {
			request = append(request, a)
		} else {
			startup = append(startup, a)
		}
	}
	return startup, request
}

// maxFlagFileDepth bounds recursive @file expansion (a file naming itself).
const maxFlagFileDepth = 16

// maxExpandedBytes bounds the total size of expanded arguments.
const maxExpandedBytes = 256 << 20

// ErrFlagFile is wrapped when a flag file cannot be read or expanded; the
// action then runs one-shot, where the tool reads its flag files itself.
var ErrFlagFile = errors.New("flag file")

// ExpandArgs builds WorkRequest.arguments as Bazel's expandArgument does:
// each "@file" is replaced by the file's lines, one argument per line,
// recursively; "@@x" (an escaped @), external labels ("@repo//pkg:x") and
// --flagfile=/-flagfile= arguments are passed unchanged, for the worker to
// read. Files are read through an os.Root at dir (the action's working
// directory), so a flag file path or symlink cannot leave it.
func ExpandArgs(dir string, request []string) ([]string, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFlagFile, err)
	}
	defer root.Close()
	var out []string
	total := 0
	var expand func(arg string, depth int) error
	expand = func(arg string, depth int) error {
		if !strings.HasPrefix(arg, "@") || strings.HasPrefix(arg, "@@") || externalLabel.MatchString(arg) {
			total += len(arg)
			out = append(out, arg)
			return nil
		}
		if depth >= maxFlagFileDepth {
			return fmt.Errorf("%w: %s: nested more than %d deep", ErrFlagFile, arg, maxFlagFileDepth)
		}
		data, err := root.ReadFile(strings.TrimPrefix(arg[1:], "./"))
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrFlagFile, arg, err)
		}
		if total += len(data); total > maxExpandedBytes {
			return fmt.Errorf("%w: expanded arguments exceed %d bytes", ErrFlagFile, maxExpandedBytes)
		}
		for _, line := range lines(string(data)) {
			if err := expand(line, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	for _, a := range request {
		if err := expand(a, 0); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// lines splits text as Java's BufferedReader.readLine does (how Bazel reads
// a flag file): a line ends at "\n", "\r" or "\r\n"; a final terminator does
// not start another line.
func lines(text string) []string {
	var out []string
	for text != "" {
		i := strings.IndexAny(text, "\r\n")
		if i < 0 {
			out = append(out, text)
			break
		}
		out = append(out, text[:i])
		if text[i] == '\r' && i+1 < len(text) && text[i+1] == '\n' {
			i++
		}
		text = text[i+1:]
	}
	return out
}

// ToolFiles returns the tool files of an action: the inputs marked with the
// bazel_tool_input node property, or, when the client marks none (older
// Bazel, Buck2), the input files that the startup arguments name (relative to
// the working directory), and with each named file that lies in a Bazel
// external repository (external/NAME/...), every input of that repository:
// a tool's runtime (node_modules beside a .js entry point, jars beside a
// launcher) lives there, and the process needs it from its start on, not only
// while a request is staged. Their digests are part of the pool key, so a
// changed tool is never served by a stale process; a source file that happens
// to share the tool's repository only costs a key of its own.
func ToolFiles(t *inputtree.Tree, startup []string, workingDir string) []inputtree.File {
	var marked []inputtree.File
	for _, f := range t.Files {
		if f.ToolInput {
			marked = append(marked, f)
		}
	}
	if len(marked) > 0 {
		return marked
	}
	named := namedPaths(startup, workingDir)
	repos := map[string]bool{}
	for _, f := range t.Files {
		if named[f.Path] {
			if repo, ok := externalRepo(f.Path); ok {
				repos[repo] = true
			}
		}
	}
	var tools []inputtree.File
	for _, f := range t.Files {
		repo, ok := externalRepo(f.Path)
		if named[f.Path] || (ok && repos[repo]) {
			tools = append(tools, f)
		}
	}
	return tools
}

// namedPaths returns the input paths the startup arguments name.
func namedPaths(startup []string, workingDir string) map[string]bool {
	named := map[string]bool{}
	for _, a := range startup {
		p := strings.TrimPrefix(a, "./")
		if workingDir != "" {
			p = workingDir + "/" + p
		}
		named[p] = true
		// --flag=path forms name tools too (e.g. --jvm_flag=..., -jar=x.jar).
		if _, v, ok := strings.Cut(a, "="); ok {
			v = strings.TrimPrefix(v, "./")
			if workingDir != "" {
				v = workingDir + "/" + v
			}
			named[v] = true
		}
	}
	return named
}

// ToolSetID names the files ToolFiles(t, startup, workingDir) returns
// without listing them, so that an executor can remember what it derived
// from them (the pool key hashes every tool file, hundreds for a
// node_modules): an external repository's files are named by the digest of
// its Directory, which covers every name, mode and byte below it, and a
// named file outside one by its path, digest and mode. Equal IDs mean equal
// tool files. It returns "" when the client marked its tool inputs: those
// are only known by listing them.
func ToolSetID(t *inputtree.Tree, startup []string, workingDir string) string {
	for i := range t.Files {
		if t.Files[i].ToolInput {
			return ""
		}
	}
	named := namedPaths(startup, workingDir)
	var b strings.Builder
	repos := map[string]bool{}
	for i := range t.Files {
		f := &t.Files[i]
		if !named[f.Path] {
			continue
		}
		if repo, ok := externalRepo(f.Path); ok {
			repos[repo] = true
			continue
		}
		fmt.Fprintf(&b, "f%d:%s;%s;%t;", len(f.Path), f.Path, f.Digest, f.Executable)
	}
	found := 0
	for i := range t.Dirs {
		d := &t.Dirs[i]
		if repos[d.Path+"/"] {
			fmt.Fprintf(&b, "r%d:%s;%s;", len(d.Path), d.Path, d.Digest)
			found++
		}
	}
	if found != len(repos) {
		return "" // cannot happen for a tree Load made; list them then
	}
	return b.String()
}

// externalRepo returns "external/NAME/" for a path inside a Bazel external
// repository.
func externalRepo(path string) (string, bool) {
	rest, ok := strings.CutPrefix(path, "external/")
	if !ok {
		return "", false
	}
	name, _, ok := strings.Cut(rest, "/")
	if !ok || name == "" {
		return "", false
	}
	return "external/" + name + "/", true
}

// KeyInput is everything that decides whether two actions may share a worker
// process.
type KeyInput struct {
	Instance    string
	ClientKey   string
	Startup     []string
	Env         []string
	WorkingDir  string
	Protocol    string
	Multiplex   bool
	Sandboxing  bool
	Cancellable bool
	Tools       []inputtree.File
}

// PoolKey hashes k. The client's persistentWorkerKey is only one of the
// inputs: the startup command, environment, protocol and the digests of the
// tool files are hashed here too, so a client that reuses a key for a changed
// tool still gets a fresh process.
func PoolKey(k KeyInput) string {
	// Every field is written as "len:value;" into one buffer, hashed once:
	// the executor computes this for every action, over every tool file (a
	// node_modules is hundreds), so it avoids fmt (the bytes are those
	// fmt.Fprintf("%d:%s;") wrote, so keys stay the same).
	buf := make([]byte, 0, 256+len(k.Tools)*128)
	field := func(s string) {
		buf = strconv.AppendInt(buf, int64(len(s)), 10)
		buf = append(buf, ':')
		buf = append(buf, s...)
		buf = append(buf, ';')
	}
	field("hearth-worker-key-v1")
	field(k.Instance)
	field(k.ClientKey)
	field(k.WorkingDir)
	field(k.Protocol)
	field(fmt.Sprint(k.Multiplex, k.Sandboxing, k.Cancellable))
	field(strconv.Itoa(len(k.Startup)))
	for _, a := range k.Startup {
		field(a)
	}
	env := append([]string(nil), k.Env...)
	sort.Strings(env)
	field(strconv.Itoa(len(env)))
	for _, e := range env {
		field(e)
	}
	tools := append([]inputtree.File(nil), k.Tools...)
	sort.Slice(tools, func(i, j int) bool { return tools[i].Path < tools[j].Path })
	field(strconv.Itoa(len(tools)))
	for _, t := range tools {
		field(t.Path)
		field(t.Digest.String())
		field(strconv.FormatBool(t.Executable))
	}
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:])
}
