package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// MessageTemplate is a parsed success_message_template or
// failure_message_template: text with {variable} placeholders, where "{{"
// and "}}" stand for literal braces (NativeLink's formatx syntax).
type MessageTemplate struct {
	text  string
	parts []templatePart
}

type templatePart struct {
	literal  string
	variable string // set for a placeholder
}

// TemplateValues are what a message template can refer to.
type TemplateValues struct {
	// DigestFunction is the lower-case digest function name, e.g. "sha256".
	DigestFunction   string
	ActionDigestHash string
	ActionDigestSize int64
}

var templateVariables = []string{
	"digest_function", "action_digest_hash", "action_digest_size",
	"historical_results_hash", "historical_results_size",
}

// parseTemplate checks every placeholder now, so a typo fails at start
// rather than on the first finished action.
func parseTemplate(s string) (MessageTemplate, error) {
	t := MessageTemplate{text: s}
	var lit strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '{' && i+1 < len(s) && s[i+1] == '{', c == '}' && i+1 < len(s) && s[i+1] == '}':
			lit.WriteByte(c)
			i++
		case c == '{':
			end := strings.IndexByte(s[i+1:], '}')
			if end < 0 {
				return MessageTemplate{}, fmt.Errorf("unclosed \"{\" in template %q (write \"{{\" for a literal brace)", s)
			}
			name := s[i+1 : i+1+end]
			if !slices.Contains(templateVariables, name) {
				return MessageTemplate{}, fmt.Errorf("unknown template variable {%s} (want %s)", name, "{"+strings.Join(templateVariables, "}, {")+"}")
			}
			if lit.Len() > 0 {
				t.parts = append(t.parts, templatePart{literal: lit.String()})
				lit.Reset()
			}
			t.parts = append(t.parts, templatePart{variable: name})
			i += end + 1
		case c == '}':
			return MessageTemplate{}, fmt.Errorf("unmatched \"}\" in template %q (write \"}}\" for a literal brace)", s)
		default:
			lit.WriteByte(c)
		}
	}
	if lit.Len() > 0 {
		t.parts = append(t.parts, templatePart{literal: lit.String()})
	}
	return t, nil
}

// String returns the template as written.
func (t MessageTemplate) String() string { return t.text }

// IsEmpty reports whether the template produces no message.
func (t MessageTemplate) IsEmpty() bool { return len(t.parts) == 0 }

// Expand fills in the placeholders. The historical_results variables expand
// to empty text, as in NativeLink when no historical result was uploaded.
func (t MessageTemplate) Expand(v TemplateValues) string {
	var b strings.Builder
	for _, p := range t.parts {
		switch p.variable {
		case "":
			b.WriteString(p.literal)
		case "digest_function":
			b.WriteString(v.DigestFunction)
		case "action_digest_hash":
			b.WriteString(v.ActionDigestHash)
		case "action_digest_size":
			b.WriteString(strconv.FormatInt(v.ActionDigestSize, 10))
		}
	}
	return b.String()
}

func (t MessageTemplate) usesHistorical() bool {
	for _, p := range t.parts {
		if strings.HasPrefix(p.variable, "historical_") {
			return true
		}
	}
	return false
}
