package main

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The tsc scenario's workspace: a chain of TypeScript libraries, each
// importing the one before it, compiled by the real tsc_wrapped worker from
// npm (@bazel/concatjs with TypeScript 4.9.5) through the small rule in
// tscws/ts.bzl.

//go:embed tscws/ts.bzl tscws/tsc_worker.BUILD
var tscWorkspaceFiles embed.FS

// tscWorkerDir is the committed package.json and package-lock.json of the
// tsc_wrapped worker (@bazel/concatjs 5.8.1, TypeScript 4.9.5), shared with
// the e2e tests of the Buck2 bridge.
const tscWorkerDir = "e2e/testdata/tsc"

// installTscWorker runs scripts/npm-install.sh on tscWorkerDir (npm ci from
// the committed lock file, with a download cache shared by every such
// directory; a directory installed from the same lock is left alone) and
// returns the directory holding node_modules.
func installTscWorker(ctx context.Context, moduleRoot string) (string, error) {
	dir := filepath.Join(moduleRoot, filepath.FromSlash(tscWorkerDir))
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(moduleRoot, "scripts", "npm-install.sh"), dir)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("scripts/npm-install.sh %s: %w", tscWorkerDir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@bazel", "concatjs", "internal", "tsc_wrapped", "tsc_wrapped.js")); err != nil {
		return "", fmt.Errorf("scripts/npm-install.sh installed no tsc_wrapped in %s: %w", tscWorkerDir, err)
	}
	return dir, nil
}

// writeTscWorkspace writes the workspace of n libraries below dir, with the
// npm install hardlinked in as the external repository @tsc_worker, and
// returns the workspace directory.
func writeTscWorkspace(moduleRoot, dir, npmDir string, n int) (string, error) {
	src := filepath.Join(dir, "src")
	ws := filepath.Join(src, "ws")
	repo := filepath.Join(src, "tsc_worker")
	if err := removeAll(src); err != nil {
		return "", err
	}
	if err := os.CopyFS(filepath.Join(src, "stubs"), os.DirFS(filepath.Join(moduleRoot, "e2e", "testdata", "bazel", "stubs"))); err != nil {
		return "", fmt.Errorf("copying the Bazel stub repositories: %w", err)
	}
	if err := linkNodeModules(filepath.Join(npmDir, "node_modules"), filepath.Join(repo, "node_modules")); err != nil {
		return "", err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return "", fmt.Errorf("node is not installed: %w", err)
	}
	if node, err = filepath.EvalSymlinks(node); err != nil {
		return "", err
	}
	var workspace strings.Builder
	workspace.WriteString("workspace(name = \"hearthbench\")\n")
	for _, r := range []string{"rules_cc", "rules_java", "remote_coverage_tools"} {
		fmt.Fprintf(&workspace, "\nlocal_repository(\n    name = %q,\n    path = \"../stubs/%s\",\n)\n", r, r)
	}
	workspace.WriteString("\nnew_local_repository(\n    name = \"tsc_worker\",\n    path = \"../tsc_worker\",\n    build_file = \"//tools:tsc_worker.BUILD\",\n)\n")
	files := map[string]string{
		"WORKSPACE":   workspace.String(),
		"tools/BUILD": "exports_files([\"node\"])\n",
	}
	for _, name := range []string{"ts.bzl", "tsc_worker.BUILD"} {
		data, err := tscWorkspaceFiles.ReadFile("tscws/" + name)
		if err != nil {
			return "", err
		}
		files["tools/"+name] = string(data)
	}
	for i := range n {
		pkg := fmt.Sprintf("lib%02d", i)
		deps := ""
		if i > 0 {
			deps = fmt.Sprintf(", deps = [\"//lib%02d\"]", i-1)
		}
		files[pkg+"/BUILD"] = fmt.Sprintf("load(\"//tools:ts.bzl\", \"ts_lib\")\n\nts_lib(\n    name = %q,\n    srcs = [\"types.ts\", \"index.ts\"]%s,\n    visibility = [\"//visibility:public\"],\n)\n", pkg, deps)
		files[pkg+"/types.ts"] = tscTypes(i)
	}
	for name, content := range files {
		p := filepath.Join(ws, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	// Bazel digests the binary behind the link (a tool input like any other).
	if err := os.Symlink(node, filepath.Join(ws, "tools", "node")); err != nil {
		return "", err
	}
	if err := setTscSources(ws, n, "setup"); err != nil {
		return "", err
	}
	return ws, setTscMode(ws, "")
}

// setTscSources (re)writes every library's index.ts with version in it, so
// that a timed build after the warm-up has new actions and new outputs
// throughout: only the tool files are already in hearth's CAS, as on a farm
// that served the same toolchain before.
func setTscSources(ws string, n int, version string) error {
	for i := range n {
		src := tscIndex(i) + fmt.Sprintf("export const buildVersion%d = %q;\n", i, version)
		if err := os.WriteFile(filepath.Join(ws, fmt.Sprintf("lib%02d", i), "index.ts"), []byte(src), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// setTscMode writes tools/mode.bzl: the exec_properties of every ts_lib,
// {"persistentWorkerKey": key} when key is set.
func setTscMode(ws, key string) error {
	props := "{}"
	if key != "" {
		props = fmt.Sprintf("{\"persistentWorkerKey\": %q}", key)
	}
	return os.WriteFile(filepath.Join(ws, "tools", "mode.bzl"), []byte("EXEC_PROPERTIES = "+props+"\n"), 0o644)
}

// linkNodeModules hardlinks the files of from into to, leaving out the Bazel
// files that npm packages ship (BUILD, WORKSPACE, *.bzl): in a repository
// they would be packages of their own and hide the files below them.
func linkNodeModules(from, to string) error {
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		target := filepath.Join(to, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Name() == "BUILD" || d.Name() == "BUILD.bazel" || strings.HasPrefix(d.Name(), "WORKSPACE") || strings.HasSuffix(d.Name(), ".bzl"):
			return nil
		case d.Type()&fs.ModeSymlink != 0:
			dest, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(dest, target)
		default:
			if err := os.Link(path, target); err != nil {
				return fmt.Errorf("hardlinking the npm install: %w", err)
			}
			return nil
		}
	})
}

// tscTypes is library i's types.ts: a few interfaces and a generic class,
// so that each compilation type-checks something.
func tscTypes(i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "export interface Record%d {\n  id: number;\n  name: string;\n  tags: ReadonlyArray<string>;\n  score%d: number;\n}\n\n", i, i)
	fmt.Fprintf(&b, "export type Keyed%d = { readonly [K in keyof Record%d]: Record%d[K] };\n\n", i, i, i)
	fmt.Fprintf(&b, "export class Store%d<T extends { id: number }> {\n  private readonly items = new Map<number, T>();\n  put(item: T): this { this.items.set(item.id, item); return this; }\n  get(id: number): T | undefined { return this.items.get(id); }\n  all(): T[] { return [...this.items.values()].sort((a, b) => a.id - b.id); }\n}\n", i)
	return b.String()
}

// tscIndex is library i's index.ts: functions over its own types that build
// on library i-1's.
func tscIndex(i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "import { Record%d, Store%d } from \"./types\";\n", i, i)
	if i > 0 {
		fmt.Fprintf(&b, "import { make%d, Record%d } from \"../lib%02d/index\";\n", i-1, i-1, i-1)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "export * from \"./types\";\n\n")
	if i > 0 {
		fmt.Fprintf(&b, "export function make%d(n: number): Record%d & { prev: Record%d } {\n  const prev = make%d(n + 1);\n  return { id: n, name: `lib%d-${prev.name}`, tags: [...prev.tags, \"lib%d\"], score%d: n * %d, prev };\n}\n\n", i, i, i-1, i-1, i, i, i, i+1)
	} else {
		fmt.Fprintf(&b, "export function make0(n: number): Record0 {\n  return { id: n, name: \"lib0\", tags: [\"lib0\"], score0: n };\n}\n\n")
	}
	for j := range 8 {
		fmt.Fprintf(&b, "export function summarize%d_%d(items: ReadonlyArray<Record%d>): { total: number; names: string[] } {\n  const store = new Store%d<Record%d>();\n  items.forEach((it) => store.put(it));\n  const all = store.all().filter((it) => it.score%d > %d);\n  return { total: all.reduce((s, it) => s + it.score%d, 0), names: all.map((it) => it.name.toUpperCase()) };\n}\n\n", i, j, i, i, i, i, j, i)
	}
	return b.String()
}
