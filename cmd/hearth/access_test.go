package main

import (
	"strings"
	"testing"
)

func TestCheckPlaintext(t *testing.T) {
	for _, tc := range []struct {
		addr     string
		insecure bool
		ok       bool
	}{
		{"127.0.0.1:8980", false, true},
		{"[::1]:8980", false, true},
		{"localhost:8980", false, true},
		{"0.0.0.0:8980", false, false},
		{":8980", false, false},
		{"[::]:8980", false, false},
		{"10.1.2.3:8980", false, false},
		{"hearth.example.com:8980", false, false},
		{"0.0.0.0:8980", true, true},
	} {
		err := checkPlaintext("gRPC", tc.addr, tc.insecure, "fix it")
		if (err == nil) != tc.ok {
			t.Errorf("checkPlaintext(%q, insecure=%v) = %v, want ok=%v", tc.addr, tc.insecure, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--insecure") {
			t.Errorf("%q: the error does not name --insecure: %v", tc.addr, err)
		}
	}
}
