package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeKeyFlags: a bad key file or per-key limit is a usage error that names the line, never
// the key, before anything starts.
func TestServeKeyFlags(t *testing.T) {
	dir := t.TempDir()
	keyFile := func(content string) string {
		p := filepath.Join(dir, "keys")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name   string
		args   []string
		stderr string
	}{
		{"unknown word", []string{"serve", "--api-key-file", keyFile("sk-secret-0123456789abcdef superuser\n")}, `line 1: "superuser"`},
		{"missing file", []string{"serve", "--api-key-file", filepath.Join(dir, "none")}, "--api-key-file"},
		{"negative runs", []string{"serve", "--key-runs", "-1"}, "--key-runs"},
		{"cluster: a malformed label", []string{"serve", "--cluster", "embedded", "--labels", "zone"}, "--labels"},
		{"cluster: an unknown tier", []string{"serve", "--cluster", "embedded", "--tiers", "nano,gpu"}, "--tiers"},
		{"cluster: not a NATS URL", []string{"serve", "--cluster", "http://a:4222"}, "--cluster"},
		{"cluster: zero replicas", []string{"serve", "--cluster", "embedded", "--cluster-replicas", "0"}, "--cluster-replicas"},
		{"cluster: replicating sessions without a fleet", []string{"serve", "--replicate-sessions"}, "--replicate-sessions needs --cluster"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), tc.args, strings.NewReader(""), &out, &errOut)
			if code != exitUsage || !strings.Contains(errOut.String(), tc.stderr) || strings.Contains(errOut.String(), "sk-secret") {
				t.Fatalf("exit %d, stderr %q; want %d with %q and no key", code, errOut.String(), exitUsage, tc.stderr)
			}
		})
	}
}
