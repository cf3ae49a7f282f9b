package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestDLPScanCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	secretText := "card 4111 1111 1111 1111\nkey AKIAZ52HGXYRN4WBTEST\n"
	file := write("leak.txt", secretText)
	pack := write("pack.toml", "[[rules]]\nid = \"acme\"\ntype = \"acme\"\nregex = '''acme_[0-9]{6}'''\n")
	badPack := write("bad.toml", "[[rules]]\nid = \"acme\"\nregex = '''(acme'''\n")
	type finding struct {
		Type, Rule string
		Start, End int
	}
	cases := []struct {
		name     string
		args     []string
		stdin    string
		exit     int
		findings []string // type/rule of the JSON findings; nil: stdout is not checked as JSON
		stdout   string   // substring
		stderr   string   // substring
	}{
		{name: "findings exit 1", args: []string{"dlp", "scan", file}, exit: 1, findings: []string{"card/card", "secret/aws-access-token"}},
		{name: "stdin", args: []string{"dlp", "scan", "-"}, stdin: "mail bob@example.com", exit: 1, findings: []string{"email/email"}},
		{name: "clean exit 0", args: []string{"dlp", "scan", "-"}, stdin: "nothing to see", exit: 0, findings: []string{}},
		{name: "pack adds a rule", args: []string{"dlp", "scan", "--pack", pack, "-"}, stdin: "id acme_123456", exit: 1, findings: []string{"acme/acme"}},
		{name: "disable a detector", args: []string{"dlp", "scan", "--disable", "email", "-"}, stdin: "bob@example.com", exit: 0, findings: []string{}},
		{name: "text output", args: []string{"dlp", "scan", "-json=false", file}, exit: 1, stdout: "5-24\tcard\tcard\n"},
		{name: "redact output", args: []string{"dlp", "scan", "--redact", file}, exit: 1, stdout: "card [REDACTED:card]\nkey [REDACTED:secret]\n"},
		{name: "bad pack exit 2 with file:line", args: []string{"dlp", "scan", "--pack", badPack, file}, exit: 2, stderr: badPack + ":3:"},
		{name: "unknown detector exit 2", args: []string{"dlp", "scan", "--disable", "emails", file}, exit: 2, stderr: `no detector type "emails"`},
		{name: "missing file exit 2", args: []string{"dlp", "scan", filepath.Join(dir, "nope")}, exit: 2, stderr: "no such file"},
		{name: "no file exit 2", args: []string{"dlp", "scan"}, exit: 2, stderr: "one file"},
		{name: "unknown subcommand exit 2", args: []string{"dlp", "frob"}, exit: 2, stderr: "unknown subcommand"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), tc.args, strings.NewReader(tc.stdin), &out, &errOut)
			if code != tc.exit {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.exit, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tc.stdout) || !strings.Contains(errOut.String(), tc.stderr) {
				t.Fatalf("stdout %q (want %q)\nstderr %q (want %q)", out.String(), tc.stdout, errOut.String(), tc.stderr)
			}
			if tc.findings == nil {
				return
			}
			var res struct{ Findings []finding }
			if err := json.Unmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("stdout is not JSON: %v\n%s", err, out.String())
			}
			got := []string{}
			for _, f := range res.Findings {
				got = append(got, f.Type+"/"+f.Rule)
			}
			if !slices.Equal(got, tc.findings) {
				t.Errorf("findings %q, want %q", got, tc.findings)
			}
			// The output names spans, never the values.
			for _, v := range []string{"4111", "AKIA", "bob@"} {
				if strings.Contains(out.String(), v) {
					t.Errorf("stdout contains the value %q", v)
				}
			}
		})
	}
}
