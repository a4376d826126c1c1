package config

import (
	"os"
	"time"
)

// Decoder decodes another JSON5 configuration file of Hearth (the server's,
// internal/serverconfig) with the worker file's rules and error style:
// errors are FieldErrors naming the field path and are all collected, null
// means absent, strings expand $VAR, ${VAR} and ${VAR:-default}, sizes and
// durations take the same forms, and unknown fields are errors that list
// the known ones.
type Decoder struct{ d *decoder }

// Object is a JSON5 object being decoded field by field; see Decoder.
type Object struct{ o *object }

// NewDecoder returns a decoder expanding variables from the process
// environment.
func NewDecoder() *Decoder { return &Decoder{d: &decoder{lookupEnv: os.LookupEnv}} }

// DecodeJSON5 parses data into generic values (numbers as json5.Number),
// with the worker file's syntax error messages (line and column).
func DecodeJSON5(data []byte) (any, error) { return decodeJSON5(data) }

// IndexPath names element i of the array at parent ("a[3]").
func IndexPath(parent string, i int) string { return indexPath(parent, i) }

// Object starts decoding v, which must be an object, at path.
func (d *Decoder) Object(path string, v any) (*Object, bool) {
	o, ok := d.d.object(path, v)
	if !ok {
		return nil, false
	}
	return &Object{o: o}, true
}

// Get returns key's value and path; ok is false when it is absent or null.
// Every key asked for is a known field for RejectUnknown.
func (o *Object) Get(key string) (v any, path string, ok bool) { return o.o.get(key) }

// RejectUnknown reports every field that Get was not asked for.
func (o *Object) RejectUnknown() { o.o.rejectUnknown() }

// Has reports whether the object has key, null or not, without making it a
// known field.
func (o *Object) Has(key string) bool {
	_, ok := o.o.fields[key]
	return ok
}

// String decodes a string, expanding environment variables.
func (d *Decoder) String(path string, v any) (string, bool) { return d.d.str(path, v) }

// Strings decodes an array of strings, expanding environment variables.
func (d *Decoder) Strings(path string, v any) ([]string, bool) { return d.d.strList(path, v, true) }

// Bool decodes true or false.
func (d *Decoder) Bool(path string, v any) (bool, bool) { return d.d.boolean(path, v) }

// Integer decodes an integer in [lo, hi].
func (d *Decoder) Integer(path string, v any, lo, hi int64) (int64, bool) {
	return d.d.integer(path, v, lo, hi)
}

// Size decodes a byte count: a number or a string such as "10GiB".
func (d *Decoder) Size(path string, v any) (uint64, bool) { return d.d.size(path, v) }

// Duration decodes a whole number of seconds or a string such as "30m".
func (d *Decoder) Duration(path string, v any) (time.Duration, bool) { return d.d.seconds(path, v) }

// Enum decodes one of names and returns its index.
func (d *Decoder) Enum(path string, v any, names []string) (int, bool) {
	return d.d.enum(path, v, names)
}

// Errorf records an error at path.
func (d *Decoder) Errorf(path, format string, args ...any) { d.d.errorf(path, format, args...) }

// Warnf records a warning at path.
func (d *Decoder) Warnf(path, format string, args ...any) { d.d.warnf(path, format, args...) }

// Err returns every error recorded, joined, or nil.
func (d *Decoder) Err() error { return d.d.err() }

// Warnings returns the warnings recorded, each prefixed with its path.
func (d *Decoder) Warnings() []string { return d.d.warnings }
