package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hearth-build/hearth/internal/auth"
)

const tokenUsage = `usage:
  hearth token new    print a new random bearer token
  hearth token hash   read a token on stdin, print the SHA-256 hex that
                      the server configuration's token_sha256 stores
`

// runToken is `hearth token new|hash`: making tokens and the hashes the
// server configuration holds, without the token ever being a command-line
// argument (which other users can see in process listings).
func runToken(args []string) error {
	if len(args) != 1 {
		fmt.Fprint(os.Stderr, tokenUsage)
		return errors.New("want one of: new, hash")
	}
	switch args[0] {
	case "new":
		fmt.Println(auth.NewToken())
		return nil
	case "hash":
		tok, err := readToken(os.Stdin)
		if err != nil {
			return err
		}
		fmt.Println(auth.HashToken(tok))
		return nil
	case "-h", "--help", "help":
		fmt.Print(tokenUsage)
		return nil
	default:
		fmt.Fprint(os.Stderr, tokenUsage)
		return fmt.Errorf("unknown token command %q", args[0])
	}
}

// readToken reads the first line of r, the way ReadTokenFile reads a file.
func readToken(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	tok := strings.TrimSpace(line)
	if tok == "" || strings.ContainsAny(tok, " \t") {
		return "", errors.New("stdin must hold one token (e.g. hearth token hash < token-file)")
	}
	return tok, nil
}
