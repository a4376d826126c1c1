package config

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/titanous/json5"
)

// decoder walks a generic JSON5 value tree (as decoded with UseNumber) and
// turns it into typed values. It collects every error instead of stopping at
// the first, so a user fixing a translated config sees all problems at once.
type decoder struct {
	// embedded: the workers run inside `hearth serve` (see ParseEmbedded).
	embedded  bool
	lookupEnv func(string) (string, bool)
	errs      []error
	warnings  []string
}

func (d *decoder) errorf(path, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) warnf(path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	d.warnings = append(d.warnings, msg)
}

func (d *decoder) err() error {
	switch len(d.errs) {
	case 0:
		return nil
	case 1:
		return d.errs[0]
	default:
		return errors.Join(d.errs...)
	}
}

// fieldPath names key inside parent: "a.b" for identifier-like keys and
// `a["some key"]` otherwise, so every path can be pasted back unambiguously.
func fieldPath(parent, key string) string {
	if !isPathIdent(key) {
		return parent + "[" + strconv.Quote(key) + "]"
	}
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func indexPath(parent string, i int) string {
	return parent + "[" + strconv.Itoa(i) + "]"
}

func isPathIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		letter := c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		if !letter && (i == 0 || !(c == '-' || (c >= '0' && c <= '9'))) {
			return false
		}
	}
	return true
}

// describe names a decoded value for error messages.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("boolean %t", x)
	case string:
		return fmt.Sprintf("string %q", x)
	case json5.Number:
		return "number " + string(x)
	case float64: // Infinity and NaN arrive as float64 even with UseNumber.
		return "number " + strconv.FormatFloat(x, 'g', -1, 64)
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// object is a JSON object being decoded field by field. Every key read
// through get is known; rejectUnknown reports the rest.
type object struct {
	d      *decoder
	path   string
	fields map[string]any
	known  []string
}

func (d *decoder) object(path string, v any) (*object, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		d.errorf(path, "want an object, got %s", describe(v))
		return nil, false
	}
	return &object{d: d, path: path, fields: m}, true
}

// get returns key's value and path. ok is false when the key is absent or
// null: NativeLink's optional fields treat null as absent, and so does Hearth
// for every field.
func (o *object) get(key string) (v any, path string, ok bool) {
	o.known = append(o.known, key)
	v, ok = o.fields[key]
	return v, fieldPath(o.path, key), ok && v != nil
}

func (o *object) rejectUnknown() {
	for _, key := range sortedKeys(o.fields) {
		if slices.Contains(o.known, key) {
			continue
		}
		known := slices.Clone(o.known)
		slices.Sort(known)
		hint := ""
		if s := closest(key, known); s != "" {
			hint = fmt.Sprintf("; did you mean %q?", s)
		}
		o.d.errorf(fieldPath(o.path, key), "unknown field%s (known fields: %s)", hint, strings.Join(known, ", "))
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// closest returns the candidate nearest to s by edit distance, if it is near
// enough to be a plausible typo.
func closest(s string, candidates []string) string {
	best, bestDist := "", max(2, len(s)/3)+1
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// rawString returns a string value as written.
func (d *decoder) rawString(path string, v any) (string, bool) {
	s, ok := v.(string)
	if !ok {
		d.errorf(path, "want a string, got %s", describe(v))
	}
	return s, ok
}

// str returns a string value with environment variables expanded, as
// NativeLink does for most string fields.
func (d *decoder) str(path string, v any) (string, bool) {
	s, ok := d.rawString(path, v)
	if !ok {
		return "", false
	}
	return d.expand(path, s)
}

func (d *decoder) strList(path string, v any, expand bool) ([]string, bool) {
	items, ok := v.([]any)
	if !ok {
		d.errorf(path, "want an array of strings, got %s", describe(v))
		return nil, false
	}
	out := make([]string, 0, len(items))
	allOK := true
	for i, item := range items {
		var s string
		if expand {
			s, ok = d.str(indexPath(path, i), item)
		} else {
			s, ok = d.rawString(indexPath(path, i), item)
		}
		allOK = allOK && ok
		out = append(out, s)
	}
	return out, allOK
}

func (d *decoder) boolean(path string, v any) (bool, bool) {
	b, ok := v.(bool)
	if !ok {
		d.errorf(path, "want true or false, got %s", describe(v))
	}
	return b, ok
}

// enum maps a string to its index in names.
func (d *decoder) enum(path string, v any, names []string) (int, bool) {
	s, ok := v.(string)
	if !ok {
		d.errorf(path, "want one of %s, got %s", strings.Join(names, ", "), describe(v))
		return 0, false
	}
	i := slices.Index(names, s)
	if i < 0 {
		d.errorf(path, "unknown value %q (want %s)", s, strings.Join(names, ", "))
		return 0, false
	}
	return i, true
}

// integer accepts a number literal or, as NativeLink does, a string holding
// one after ${VAR} expansion.
func (d *decoder) integer(path string, v any, lo, hi int64) (int64, bool) {
	v = normalizeNumber(v)
	var n int64
	switch x := v.(type) {
	case json5.Number:
		var err error
		if n, err = parseIntLiteral(string(x)); err != nil {
			d.errorf(path, "%v", err)
			return 0, false
		}
	case string:
		s, ok := d.expand(path, x)
		if !ok {
			return 0, false
		}
		var err error
		if n, err = parseIntLiteral(strings.TrimSpace(s)); err != nil {
			d.errorf(path, "want an integer, got %s", describe(x))
			return 0, false
		}
	default:
		d.errorf(path, "want an integer, got %s", describe(v))
		return 0, false
	}
	if n < lo || n > hi {
		if hi == math.MaxInt64 {
			d.errorf(path, "%d is out of range (want at least %d)", n, lo)
		} else {
			d.errorf(path, "%d is out of range (want %d to %d)", n, lo, hi)
		}
		return 0, false
	}
	return n, true
}

// normalizeNumber turns a finite float64, as a caller that decoded JSON5
// without UseNumber passes to DecodeLocalWorker, into a json5.Number.
// Infinity and NaN stay float64 and are rejected by the caller.
func normalizeNumber(v any) any {
	if f, ok := v.(float64); ok && !math.IsInf(f, 0) && !math.IsNaN(f) {
		return json5.Number(strconv.FormatFloat(f, 'g', -1, 64))
	}
	return v
}

// parseIntLiteral parses a JSON5 integer: decimal, hexadecimal (0x), or an
// integral number written with a fraction or exponent (1e9).
func parseIntLiteral(s string) (int64, error) {
	body := strings.TrimPrefix(strings.TrimPrefix(s, "+"), "-")
	neg := strings.HasPrefix(s, "-")
	if len(body) > 2 && body[0] == '0' && (body[1] == 'x' || body[1] == 'X') {
		u, err := strconv.ParseUint(body[2:], 16, 63)
		if err != nil {
			return 0, fmt.Errorf("%s is not an integer in range", s)
		}
		if neg {
			return -int64(u), nil
		}
		return int64(u), nil
	}
	if n, err := strconv.ParseInt(strings.TrimPrefix(s, "+"), 10, 64); err == nil {
		return n, nil
	}
	f, _, err := big.ParseFloat(body, 10, 256, big.ToNearestEven)
	if err != nil || !f.IsInt() {
		return 0, fmt.Errorf("want an integer, got %s", s)
	}
	if neg {
		f.Neg(f)
	}
	n, acc := f.Int64()
	if acc != big.Exact {
		return 0, fmt.Errorf("%s is too large", s)
	}
	return n, nil
}

// number accepts any finite number (or a string holding one).
func (d *decoder) number(path string, v any) (float64, bool) {
	v = normalizeNumber(v)
	var s string
	switch x := v.(type) {
	case json5.Number:
		s = string(x)
	case string:
		var ok bool
		if s, ok = d.expand(path, x); !ok {
			return 0, false
		}
		s = strings.TrimSpace(s)
	default:
		d.errorf(path, "want a finite number, got %s", describe(v))
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		n, ierr := parseIntLiteral(s) // hexadecimal
		if ierr != nil {
			d.errorf(path, "want a finite number, got %s", describe(v))
			return 0, false
		}
		f = float64(n)
	}
	if math.IsInf(f, 0) || math.IsNaN(f) {
		d.errorf(path, "want a finite number, got %s", describe(v))
		return 0, false
	}
	return f, true
}

// seconds accepts NativeLink's duration forms: an integer number of seconds,
// or a string with a duration such as "30m", "1h2m3s" or "1d".
func (d *decoder) seconds(path string, v any) (time.Duration, bool) {
	v = normalizeNumber(v)
	var dur time.Duration
	switch x := v.(type) {
	case json5.Number:
		n, err := parseIntLiteral(string(x))
		if err != nil {
			d.errorf(path, "want a whole number of seconds or a duration string like \"30m\", got %s", describe(v))
			return 0, false
		}
		if n < 0 || n > int64(math.MaxInt64/time.Second) {
			d.errorf(path, "%d seconds is out of range", n)
			return 0, false
		}
		dur = time.Duration(n) * time.Second
	case string:
		s, ok := d.expand(path, x)
		if !ok {
			return 0, false
		}
		var err error
		if dur, err = parseDuration(strings.TrimSpace(s)); err != nil {
			d.errorf(path, "%v", err)
			return 0, false
		}
	default:
		d.errorf(path, "want a whole number of seconds or a duration string like \"30m\", got %s", describe(v))
		return 0, false
	}
	return dur, true
}

var durationUnits = map[string]time.Duration{
	"ns": time.Nanosecond, "nsec": time.Nanosecond, "nanos": time.Nanosecond,
	"us": time.Microsecond, "µs": time.Microsecond, "usec": time.Microsecond, "micros": time.Microsecond,
	"ms": time.Millisecond, "msec": time.Millisecond, "millis": time.Millisecond,
	"s": time.Second, "sec": time.Second, "secs": time.Second, "second": time.Second, "seconds": time.Second,
	"m": time.Minute, "min": time.Minute, "mins": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hr": time.Hour, "hrs": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
	"w": 7 * 24 * time.Hour, "week": 7 * 24 * time.Hour, "weeks": 7 * 24 * time.Hour,
}

// parseDuration parses "600" (seconds) or a sequence of number+unit terms
// ("1h 30m", "1.5h", "90s"), the forms NativeLink's humantime parser takes
// apart from months and years.
func parseDuration(s string) (time.Duration, error) {
	bad := func() (time.Duration, error) {
		return 0, fmt.Errorf("invalid duration %q (want seconds, or terms like \"90s\", \"30m\", \"1h30m\", \"1d\")", s)
	}
	if s == "" {
		return bad()
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > int64(math.MaxInt64/time.Second) {
			return bad()
		}
		return time.Duration(n) * time.Second, nil
	}
	var total float64
	for rest := s; rest != ""; {
		rest = strings.TrimLeft(rest, " ")
		numEnd := strings.IndexFunc(rest, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
		if numEnd <= 0 {
			return bad()
		}
		num, err := strconv.ParseFloat(rest[:numEnd], 64)
		if err != nil {
			return bad()
		}
		rest = strings.TrimLeft(rest[numEnd:], " ")
		unitEnd := strings.IndexFunc(rest, func(r rune) bool { return (r >= '0' && r <= '9') || r == ' ' })
		if unitEnd < 0 {
			unitEnd = len(rest)
		}
		unit, ok := durationUnits[rest[:unitEnd]]
		if !ok {
			return bad()
		}
		total += num * float64(unit)
		rest = rest[unitEnd:]
	}
	if total >= math.MaxInt64 {
		return bad()
	}
	return time.Duration(math.Round(total)), nil
}

// size accepts a byte count or, as NativeLink does, a string such as "10GB"
// (powers of 1000) or "2GiB" (powers of 1024).
func (d *decoder) size(path string, v any) (uint64, bool) {
	v = normalizeNumber(v)
	switch x := v.(type) {
	case json5.Number:
		n, err := parseIntLiteral(string(x))
		if err != nil || n < 0 {
			d.errorf(path, "want a non-negative whole number of bytes or a size like \"10GiB\", got %s", describe(v))
			return 0, false
		}
		return uint64(n), true
	case string:
		s, ok := d.expand(path, x)
		if !ok {
			return 0, false
		}
		n, err := parseSize(strings.TrimSpace(s))
		if err != nil {
			d.errorf(path, "%v", err)
			return 0, false
		}
		return n, true
	default:
		d.errorf(path, "want a non-negative whole number of bytes or a size like \"10GiB\", got %s", describe(v))
		return 0, false
	}
}

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12, "p": 1e15, "pb": 1e15,
	"ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30,
	"ti": 1 << 40, "tib": 1 << 40, "pi": 1 << 50, "pib": 1 << 50,
}

func parseSize(s string) (uint64, error) {
	numEnd := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if numEnd < 0 {
		numEnd = len(s)
	}
	unit, ok := sizeUnits[strings.ToLower(strings.TrimSpace(s[numEnd:]))]
	num, _, err := big.ParseFloat(s[:numEnd], 10, 256, big.ToNearestEven)
	if numEnd == 0 || !ok || err != nil {
		return 0, fmt.Errorf("invalid size %q (want bytes, or a size like \"500MB\", \"10GiB\", \"1.5TB\")", s)
	}
	num.Mul(num, new(big.Float).SetInt64(unit))
	n, acc := num.Int64()
	if n < 0 || (acc != big.Exact && n == math.MaxInt64) {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return uint64(n), nil
}

// expand replaces $VAR, ${VAR} and ${VAR:-default} with the environment's
// values, as NativeLink's shellexpand does. A "$" not followed by a name is
// kept. An unset variable without a default is an error, so a typo never
// silently becomes an empty path.
func (d *decoder) expand(path, s string) (string, bool) {
	if !strings.Contains(s, "$") {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			i++
			continue
		}
		var name, def string
		var hasDef bool
		next := i + 1
		if s[i+1] == '{' {
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				d.errorf(path, "unterminated \"${\" in %q", s)
				return "", false
			}
			name, def, hasDef = strings.Cut(s[i+2:i+2+end], ":-")
			if !isEnvName(name) {
				d.errorf(path, "invalid variable name %q in %q", name, s)
				return "", false
			}
			next = i + 2 + end + 1
		} else {
			for next < len(s) && isEnvNameByte(s[next], next == i+1) {
				next++
			}
			name = s[i+1 : next]
			if name == "" {
				b.WriteByte('$')
				i++
				continue
			}
		}
		val, set := d.lookupEnv(name)
		switch {
		case hasDef && val == "":
			val = def
		case !set:
			d.errorf(path, "environment variable %s is not set (write ${%s:-default} to give a default)", name, name)
			return "", false
		}
		b.WriteString(val)
		i = next
	}
	return b.String(), true
}

func isEnvName(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isEnvNameByte(s[i], i == 0) {
			return false
		}
	}
	return s != ""
}

func isEnvNameByte(c byte, first bool) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9')
}

// FieldPath is the path of field key inside parent, written as errors name
// fields: workers[0].local.platform_properties["cpu.arch"].
func FieldPath(parent, key string) string { return fieldPath(parent, key) }
