package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that no input makes the parser panic, and that every
// rejection is reported as a configuration error.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile(filepath.Join("testdata", "nativelink_worker.json5"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte(`{workers: [{local: {` + baseLocal + `max_action_timeout: "1h", persistent_workers: {protocols: ["json"]}}}]}`))
	f.Add([]byte(`{workers: [{local: {additional_environment: {A: {value: "${X:-y}"}}, upload_action_result: {success_message_template: "{{}}"}}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := parse(data, testMachine, testLookup, false)
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("error %v does not wrap ErrInvalid", err)
		}
	})
}
