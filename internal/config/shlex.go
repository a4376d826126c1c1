package config

import (
	"errors"
	"fmt"
	"strings"
)

var errUnterminated = errors.New("unterminated quote or trailing backslash")

// splitWords splits a command line the way a POSIX shell splits words, with
// no expansion of any kind: blanks separate words, '...' is literal, "..."
// allows \" \\ \$ \` and line continuation, a backslash outside quotes
// escapes the next character, and # at the start of a word begins a comment.
// NativeLink runs query_cmd, entrypoint-like and precondition commands after
// the same kind of split (the shlex crate), never through a shell.
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("cannot split %q: %w", s, errUnterminated)
			}
			i++
			if s[i] != '\n' {
				cur.WriteByte(s[i])
				inWord = true
			}
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("cannot split %q: %w", s, errUnterminated)
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`\n", s[i+1]) >= 0 {
					i++
					if s[i] == '\n' {
						continue
					}
				}
				cur.WriteByte(s[i])
			}
			if i == len(s) {
				return nil, fmt.Errorf("cannot split %q: %w", s, errUnterminated)
			}
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}
