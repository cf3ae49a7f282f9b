package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/cli"
)

// TestCLIOnHeavy: `agentbox run` on the heavy tier, chosen or routed, with --file, --out (files under
// /output come back from heavy too) and --artifacts.
func TestCLIOnHeavy(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "in.csv")
	os.WriteFile(data, []byte("x,y\n1,2\n3,4\n"), 0o644)
	prog := filepath.Join(dir, "job.py")
	os.WriteFile(prog, []byte("import pandas as pd, matplotlib.pyplot as plt\n"+
		"df = pd.read_csv('/data/in.csv')\ndf.plot()\nplt.show()\n"+
		"open('/output/sum.txt', 'w').write(str(int(df.x.sum())))\nprint('rows', len(df))\n"), 0o644)
	cases := []struct {
		name   string
		args   []string
		exit   int
		stdout string
		stderr string
		check  func(t *testing.T, out string)
	}{
		{name: "routed by its imports", args: []string{"run", "--json", "--file", data, "--out", "/output/sum.txt:" + filepath.Join(dir, "auto.txt"), prog},
			check: func(t *testing.T, out string) {
				var r api.Result
				if err := json.Unmarshal([]byte(out), &r); err != nil || r.Tier != api.TierHeavy || !strings.Contains(r.RouteReason, "imports pandas") || r.Stdout != "rows 2\n" {
					t.Fatalf("%v %s", err, out)
				}
				if b, err := os.ReadFile(filepath.Join(dir, "auto.txt")); err != nil || string(b) != "4" {
					t.Fatalf("--out from heavy: %q %v", b, err)
				}
			}},
		{name: "asked for, with artifacts", args: []string{"run", "--tier", "heavy", "--file", data, "--artifacts", filepath.Join(dir, "charts"), prog}, stdout: "rows 2\n", stderr: "wrote",
			check: func(t *testing.T, _ string) {
				charts, _ := filepath.Glob(filepath.Join(dir, "charts", "*.png"))
				if len(charts) != 1 {
					t.Fatalf("charts: %v", charts)
				}
			}},
		{name: "missing --out file", args: []string{"run", "--tier", "heavy", "--out", "/output/none.txt:" + filepath.Join(dir, "none"), "-"}, exit: 1, stderr: "did not write that file"},
		{name: "--out outside /output", args: []string{"run", "--tier", "heavy", "--out", "/tmp/x:" + filepath.Join(dir, "x"), "-"}, exit: 2, stderr: "files under /output"},
		{name: "falls back from nano", args: []string{"run", "--out", "/output/f.txt:" + filepath.Join(dir, "f.txt"), "-"}, stdout: "6\n", stderr: "running it again on the heavy tier",
			check: func(t *testing.T, _ string) {
				if b, err := os.ReadFile(filepath.Join(dir, "f.txt")); err != nil || string(b) != "heavy" {
					t.Fatalf("%q %v", b, err)
				}
			}},
	}
	stdin := map[string]string{
		"missing --out file":    "pass",
		"--out outside /output": "pass",
		"falls back from nano":  "m = __import__('nu' + 'mpy')\nprint(int(m.arange(4).sum()))\nopen('/output/f.txt', 'w').write('heavy')",
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := cli.Main(context.Background(), tc.args, strings.NewReader(stdin[tc.name]), &out, &errOut)
			if code != tc.exit || !strings.Contains(out.String(), tc.stdout) || !strings.Contains(errOut.String(), tc.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, tc.exit, out.String(), tc.stdout, errOut.String(), tc.stderr)
			}
			if tc.check != nil {
				tc.check(t, out.String())
			}
		})
	}
}

// TestCLIRouteReasonIsTheAPIsOnHeavy: with the heavy tier installed, `agentbox run` places a program
// as the API does: the same tier, route_reason and fallback_from, routed or fallen back.
func TestCLIRouteReasonIsTheAPIsOnHeavy(t *testing.T) {
	ctx := context.Background()
	c, _ := apiServer(t)
	for _, tc := range []struct{ name, code string }{
		{"routed by its imports", "import pandas\nprint(1)"},
		{"falls back from nano", "m = __import__('nu' + 'mpy')\nprint(int(m.arange(4).sum()))"},
		{"stays on nano", "import json\nprint(1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			cli.Main(ctx, []string{"run", "--json", "-"}, strings.NewReader(tc.code), &out, &errOut)
			var fromCLI api.Result
			if err := json.Unmarshal(out.Bytes(), &fromCLI); err != nil {
				t.Fatalf("CLI: %v\nstdout %q\nstderr %q", err, out.String(), errOut.String())
			}
			fromAPI, err := c.Run(ctx, api.RunBody{Code: tc.code})
			if err != nil {
				t.Fatal(err)
			}
			if fromAPI.RouteReason == "" || fromCLI.Tier != fromAPI.Tier || fromCLI.RouteReason != fromAPI.RouteReason || fromCLI.FallbackFrom != fromAPI.FallbackFrom {
				t.Fatalf("CLI placed it on %s (%q, fallback from %q)\nAPI on %s (%q, fallback from %q)",
					fromCLI.Tier, fromCLI.RouteReason, fromCLI.FallbackFrom, fromAPI.Tier, fromAPI.RouteReason, fromAPI.FallbackFrom)
			}
			if fromCLI.Stdout != fromAPI.Stdout {
				t.Fatalf("stdout: CLI %q, API %q", fromCLI.Stdout, fromAPI.Stdout)
			}
		})
	}
}

// TestCLIExec: `agentbox exec SESSION -- CMD` against a server on the heavy tier: output streamed,
// the command's exit code is agentbox's, stdin, env and cwd passed, a timeout exits 124.
func TestCLIExec(t *testing.T) {
	ctx := context.Background()
	c, ts := apiServer(t)
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: "heavy"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	conn := []string{"exec", "--url", ts.URL, s.ID()}
	cases := []struct {
		name           string
		args           []string
		stdin          string
		exit           int
		stdout, stderr string
		pid            bool // stdout is a pid
	}{
		{"echo", []string{"--", "echo", "hello"}, "", 0, "hello\n", "", false},
		{"the exit code is agentbox's", []string{"--shell", "--", "echo", "out;", "echo", "err", ">&2;", "exit", "3"}, "", 3, "out\n", "err\n", false},
		{"stdin, env and cwd", []string{"--stdin", "--env", "X=1", "--cwd", "/tmp", "--shell", "--", `pwd; echo $X; cat`}, "piped", 0, "/tmp\n1\npiped", "", false},
		{"a timeout exits 124", []string{"--timeout-ms", "300", "--", "sleep", "30"}, "", 124, "", "", false},
		{"killed by a signal exits 128+n", []string{"--shell", "--", "kill -TERM $$"}, "", 143, "", "", false},
		{"background prints the pid", []string{"--background", "--", "sleep", "30"}, "", 0, "", "", true},
		{"no command", []string{"--"}, "", 2, "", "no COMMAND", false},
		{"unknown session", nil, "", 125, "", "not_found", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append(slices.Clone(conn), tc.args...)
			if tc.name == "unknown session" {
				args = []string{"exec", "--url", ts.URL, "ses_nope", "--", "true"}
			}
			var out, errOut bytes.Buffer
			code := cli.Main(ctx, args, strings.NewReader(tc.stdin), &out, &errOut)
			if code != tc.exit || !strings.HasPrefix(out.String(), tc.stdout) || !strings.Contains(errOut.String(), tc.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, tc.exit, out.String(), tc.stdout, errOut.String(), tc.stderr)
			}
			if n, err := strconv.Atoi(strings.TrimSpace(out.String())); tc.pid && (err != nil || n <= 1) {
				t.Fatalf("stdout %q is not a pid", out.String())
			}
		})
	}
}
