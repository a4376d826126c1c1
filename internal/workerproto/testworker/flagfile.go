package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxFlagFileDepth stops a flag file that names itself.
const maxFlagFileDepth = 8

// expandFlagFiles replaces each flag-file argument with the file's lines,
// recursively, the way Bazel-style tools read their command lines: "@path",
// "--flagfile=path" and "-flagfile=path" name a file with one argument per
// line, and "@@x" is the escape for a literal "@x". Relative paths are
// relative to baseDir.
func expandFlagFiles(args []string, baseDir string, depth int) ([]string, error) {
	if depth > maxFlagFileDepth {
		return nil, fmt.Errorf("flag files nested more than %d deep", maxFlagFileDepth)
	}
	var out []string
	for _, arg := range args {
		path, isFlagFile := flagFilePath(arg)
		if !isFlagFile {
			if strings.HasPrefix(arg, "@@") {
				arg = arg[1:]
			}
			out = append(out, arg)
			continue
		}
		if !filepath.IsAbs(path) {
			path = filepath.Join(baseDir, path)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading flag file: %w", err)
		}
		nested, err := expandFlagFiles(splitLines(string(data)), baseDir, depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, nested...)
	}
	return out, nil
}

func flagFilePath(arg string) (string, bool) {
	switch {
	case strings.HasPrefix(arg, "@@"):
		return "", false
	case strings.HasPrefix(arg, "@") && len(arg) > 1:
		return arg[1:], true
	}
	for _, prefix := range []string{"--flagfile=", "-flagfile="} {
		if p, ok := strings.CutPrefix(arg, prefix); ok && p != "" {
			return p, true
		}
	}
	return "", false
}

// splitLines splits a flag file into arguments: one a line, a final newline
// optional, CRLF tolerated. Empty lines inside the file are empty arguments.
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	return lines
}
