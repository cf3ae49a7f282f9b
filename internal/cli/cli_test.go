package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

func TestRunCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	prog := write("job.py", "import sys\nrows = open('/data/in.csv').read().splitlines()\nopen('/output/n.txt','w').write(str(len(rows)))\nprint('rows', len(rows))\nsys.exit(int(sys.argv[0] == 'job.py') * 4)\n")
	data := write("in.csv", "a\nb\nc\n")
	outFile := filepath.Join(dir, "n.txt")
	cases := []struct {
		name       string
		args       []string
		stdin      string
		exit       int
		stdout     string // substring
		stderr     string // substring
		checkJSON  func(t *testing.T, r api.Result)
		checkFiles func(t *testing.T)
	}{
		{name: "stdin program", args: []string{"run", "-"}, stdin: "print(1+1)", exit: 0, stdout: "2\n"},
		{name: "exit code passes through", args: []string{"run", "-"}, stdin: "import sys; sys.exit(3)", exit: 3},
		{name: "traceback on stderr", args: []string{"run", "-"}, stdin: "1/0", exit: 1, stderr: "ZeroDivisionError: division by zero"},
		{name: "timeout", args: []string{"run", "--timeout", "300ms", "-"}, stdin: "while True: pass", exit: 124, stderr: "Timeout"},
		{name: "memory", args: []string{"run", "--memory", "40", "-"}, stdin: "b = bytearray(100 << 20)", exit: 137, stderr: "MemoryLimitExceeded"},
		{name: "files in and out", args: []string{"run", "--file", data, "--out", "/output/n.txt:" + outFile, prog}, exit: 4, stdout: "rows 3",
			checkFiles: func(t *testing.T) {
				if b, err := os.ReadFile(outFile); err != nil || string(b) != "3" {
					t.Fatalf("--out file: %q %v", b, err)
				}
			}},
		{name: "json result", args: []string{"run", "-", "--json", "--allow-module", "json"}, stdin: "import json\nprint(json.dumps([1]))\nimport os", exit: 1,
			checkJSON: func(t *testing.T, r api.Result) {
				if r.Stdout != "[1]\n" || r.Error == nil || r.Error.Type != "ImportError" || r.Tier != api.TierNano {
					t.Fatalf("%+v", r)
				}
			}},
		{name: "missing --out file", args: []string{"run", "--out", "/output/none:" + filepath.Join(dir, "x"), "-"}, stdin: "pass", exit: 1, stderr: "did not write that file"},
		{name: "no program", args: []string{"run"}, exit: exitUsage, stderr: "one program"},
		{name: "missing program file", args: []string{"run", filepath.Join(dir, "nope.py")}, exit: exitUsage, stderr: "no such file"},
		{name: "bad --file", args: []string{"run", "--file", filepath.Join(dir, "nope.csv"), "-"}, exit: exitUsage, stderr: "nope.csv"},
		{name: "bad --out", args: []string{"run", "--out", "relative", "-"}, exit: exitUsage, stderr: "REMOTE:LOCAL"},
		{name: "unknown flag", args: []string{"run", "--nope", "-"}, exit: exitUsage},
		{name: "unknown command", args: []string{"frobnicate"}, exit: exitUsage, stderr: "unknown command"},
		{name: "version", args: []string{"version"}, exit: 0, stdout: "python.wasm build"},
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
			if tc.checkJSON != nil {
				var r api.Result
				dec := json.NewDecoder(&out)
				if err := dec.Decode(&r); err != nil {
					t.Fatalf("stdout is not one JSON object: %v", err)
				}
				if dec.More() {
					t.Fatal("more than one JSON value on stdout")
				}
				tc.checkJSON(t, r)
			}
			if tc.checkFiles != nil {
				tc.checkFiles(t)
			}
		})
	}
}

// An argument the engine refuses is the user's mistake: exit 2 with the limit named, not 125.
func TestCLIBadLimitExits2(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		stderr []string
	}{
		{"memory above maximum", []string{"run", "--tier", "nano", "--memory", "999999", "-"}, []string{"memory_limit_mb 999999 MiB", "maximum of 2048 MiB"}},
		{"memory below minimum", []string{"run", "--tier", "nano", "--memory", "1", "-"}, []string{"memory_limit_mb 1 MiB", "minimum of"}},
		{"timeout above maximum", []string{"run", "--tier", "nano", "--timeout", "100h", "-"}, []string{"timeout_ms 360000000 ms", "maximum of"}},
		{"output cap below minimum", []string{"run", "--tier", "nano", "--max-output", "-5", "-"}, []string{"max_output_bytes is negative"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), tc.args, strings.NewReader("print('ran')"), &out, &errOut)
			if code != exitUsage {
				t.Fatalf("exit %d, want %d\nstderr: %s", code, exitUsage, errOut.String())
			}
			for _, want := range tc.stderr {
				if !strings.Contains(errOut.String(), want) {
					t.Fatalf("stderr %q lacks %q", errOut.String(), want)
				}
			}
			if out.Len() != 0 {
				t.Fatalf("the program ran: %q", out.String())
			}
		})
	}
}
