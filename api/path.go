package api

import (
	"fmt"
	"strings"
)

// MaxPathBytes is the longest sandbox path a request may name.
const MaxPathBytes = 4096

// CheckPath checks a sandbox path a caller names (a file to place, read or list): absolute, at most
// MaxPathBytes, no NUL byte and no ".." segment. Every tier, the servers and the client check with
// it, so a path is refused the same way wherever it is given.
func CheckPath(p string) error {
	switch {
	case p == "" || p[0] != '/':
		return fmt.Errorf("path %q: must be absolute", p)
	case len(p) > MaxPathBytes:
		return fmt.Errorf("path of %d bytes: too long (at most %d)", len(p), MaxPathBytes)
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("path %q: contains a NUL byte", p)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return fmt.Errorf("path %q: must not contain \"..\"", p)
		}
	}
	return nil
}
