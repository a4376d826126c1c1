package config

import (
	"strings"
	"testing"
	"time"
)

func TestSplitWords(t *testing.T) {
	cases := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: "uname -m", want: []string{"uname", "-m"}},
		{in: "  sh   -c  'echo a; echo b'  ", want: []string{"sh", "-c", "echo a; echo b"}},
		{in: `a "b c" d\ e`, want: []string{"a", "b c", "d e"}},
		{in: `"x\"y\\z\$\a"`, want: []string{`x"y\z$\a`}},
		{in: `'it''s'`, want: []string{"its"}},
		{in: `''`, want: []string{""}},
		{in: "a # comment\nb", want: []string{"a", "b"}},
		{in: "a#b", want: []string{"a#b"}},
		{in: "a \\\nb", want: []string{"a", "b"}},
		{in: "", want: nil},
		{in: "'open", wantErr: true},
		{in: `"open`, wantErr: true},
		{in: `trailing\`, wantErr: true},
	}
	for _, tc := range cases {
		got, err := splitWords(tc.in)
		if tc.wantErr {
			if err == nil {
				t.Errorf("splitWords(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("splitWords(%q): %v", tc.in, err)
			continue
		}
		wantEqual(t, "splitWords("+tc.in+")", got, tc.want)
	}
}

func TestParseDuration(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"600", 10 * time.Minute, true},
		{"0", 0, true},
		{"90s", 90 * time.Second, true},
		{"1h2m3s", time.Hour + 2*time.Minute + 3*time.Second, true},
		{"1h 30m", 90 * time.Minute, true},
		{"1.5h", 90 * time.Minute, true},
		{"1d", 24 * time.Hour, true},
		{"2 weeks", 14 * 24 * time.Hour, true},
		{"250ms", 250 * time.Millisecond, true},
		{"5 minutes", 5 * time.Minute, true},
		{"", 0, false},
		{"-5", 0, false},
		{"5", 5 * time.Second, true},
		{"5x", 0, false},
		{"m", 0, false},
		{"1h-", 0, false},
		{"99999999999999999999d", 0, false},
	}
	for _, tc := range cases {
		got, err := parseDuration(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseDuration(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0", 0, true},
		{"1024", 1024, true},
		{"10GB", 10e9, true},
		{"10gb", 10e9, true},
		{"10 GiB", 10 << 30, true},
		{"1.5TB", 1.5e12, true},
		{"500MiB", 500 << 20, true},
		{"2k", 2000, true},
		{"7B", 7, true},
		{"", 0, false},
		{"GB", 0, false},
		{"-1GB", 0, false},
		{"1 parsec", 0, false},
		{"100000000PiB", 0, false},
	}
	for _, tc := range cases {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseIntLiteral(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"42", 42, true}, {"+7", 7, true}, {"-3", -3, true}, {"0x1F", 31, true}, {"-0x10", -16, true},
		{"1e3", 1000, true}, {"2.0", 2, true}, {"1.5", 0, false}, {".5", 0, false},
		{"9223372036854775807", 9223372036854775807, true}, {"9223372036854775808", 0, false}, {"0xZZ", 0, false},
	}
	for _, tc := range cases {
		got, err := parseIntLiteral(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseIntLiteral(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestExpand(t *testing.T) {
	cases := []struct {
		in, want, wantErr string
	}{
		{in: "plain", want: "plain"},
		{in: "$RACK/x", want: "r7/x"},
		{in: "${RACK}x", want: "r7x"},
		{in: "${NOPE:-def}", want: "def"},
		{in: "${EMPTY:-def}", want: "def"},
		{in: "${RACK:-def}", want: "r7"},
		{in: "${EMPTY}", want: ""},
		{in: "cost $5 and $", want: "cost $5 and $"},
		{in: "a$-b", want: "a$-b"},
		{in: "$NOPE", wantErr: "environment variable NOPE is not set"},
		{in: "${NOPE}", wantErr: "environment variable NOPE is not set"},
		{in: "${RACK", wantErr: `unterminated "${"`},
		{in: "${1X}", wantErr: `invalid variable name "1X"`},
	}
	for _, tc := range cases {
		d := &decoder{lookupEnv: testLookup}
		got, ok := d.expand("f", tc.in)
		if tc.wantErr != "" {
			if ok || !strings.Contains(d.err().Error(), tc.wantErr) {
				t.Errorf("expand(%q) = %q, %v; want error %q", tc.in, got, d.err(), tc.wantErr)
			}
			continue
		}
		if !ok || got != tc.want {
			t.Errorf("expand(%q) = %q, %v; want %q", tc.in, got, d.err(), tc.want)
		}
	}
}

func TestMessageTemplate(t *testing.T) {
	v := TemplateValues{DigestFunction: "blake3", ActionDigestHash: "ff00", ActionDigestSize: 7}
	cases := []struct {
		in, want, wantErr string
	}{
		{in: "", want: ""},
		{in: "no vars", want: "no vars"},
		{in: "https://b/{digest_function}/action/{action_digest_hash}-{action_digest_size}/", want: "https://b/blake3/action/ff00-7/"},
		{in: "{{literal}} {action_digest_size}", want: "{literal} 7"},
		{in: "h={historical_results_hash}:{historical_results_size}", want: "h=:"},
		{in: "{nope}", wantErr: "unknown template variable {nope}"},
		{in: "{action_digest_hash", wantErr: `unclosed "{"`},
		{in: "a}b", wantErr: `unmatched "}"`},
	}
	for _, tc := range cases {
		tmpl, err := parseTemplate(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseTemplate(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseTemplate(%q): %v", tc.in, err)
			continue
		}
		if got := tmpl.Expand(v); got != tc.want {
			t.Errorf("Expand(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if tmpl.String() != tc.in || tmpl.IsEmpty() != (tc.in == "") {
			t.Errorf("template %q: String %q, IsEmpty %v", tc.in, tmpl.String(), tmpl.IsEmpty())
		}
	}
}

func TestUploadStrategyUploads(t *testing.T) {
	cases := []struct {
		s                UploadStrategy
		success, failure bool
	}{
		{UploadSuccessOnly, true, false},
		{UploadNever, false, false},
		{UploadEverything, true, true},
		{UploadFailuresOnly, false, true},
	}
	for _, tc := range cases {
		if tc.s.Uploads(true) != tc.success || tc.s.Uploads(false) != tc.failure {
			t.Errorf("%v: Uploads(true)=%v Uploads(false)=%v", tc.s, tc.s.Uploads(true), tc.s.Uploads(false))
		}
	}
}

func TestEnumStrings(t *testing.T) {
	wantEqual(t, "EnvTimeoutMillis", EnvTimeoutMillis.String(), "timeout_millis")
	wantEqual(t, "bad EnvSourceKind", EnvSourceKind(99).String(), "EnvSourceKind(99)")
	wantEqual(t, "ProtocolJSON", ProtocolJSON.String(), "json")
	wantEqual(t, "SandboxBwrap", SandboxBwrap.String(), "bwrap")
	wantEqual(t, "bad UploadStrategy", UploadStrategy(-1).String(), "UploadStrategy(-1)")
}
