package auth

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"unicode"
)

// NewToken returns a fresh random bearer token (32 bytes, base64url).
func NewToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand's contract since Go 1.24)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ReadTokenFile reads a bearer token from a file holding it alone (a
// trailing newline is allowed), as `hearth worker`'s token_file and `hearth
// run --token-file` do.
func ReadTokenFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	switch {
	case tok == "":
		return "", fmt.Errorf("token file %s is empty", path)
	case strings.IndexFunc(tok, unicode.IsSpace) >= 0:
		return "", fmt.Errorf("token file %s holds more than one word; it must hold the token alone (without \"Bearer\")", path)
	}
	return tok, nil
}
