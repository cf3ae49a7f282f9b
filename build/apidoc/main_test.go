package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunWritesTheDocsTree(t *testing.T) {
	root := filepath.Join("..", "..")
	out := t.TempDir()
	goText := filepath.Join(out, "agentbox.txt")
	if err := os.WriteFile(goText, []byte("package agentbox // import \"github.com/entersandbox/agentbox\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := run([]string{"-openapi", filepath.Join(root, "internal", "server", "openapi.yaml"),
		"-version-file", filepath.Join(root, "VERSION"), "-out", out, "-go", root + "=" + goText})
	if err != nil {
		t.Fatal(err)
	}
	version, _ := os.ReadFile(filepath.Join(root, "VERSION"))
	for _, tc := range []struct{ file, want string }{
		{"api/index.html", "API reference " + strings.TrimSpace(string(version)) + "</title>"},
		{"api/index.html", `href="openapi.yaml"`},
		{"api/openapi.yaml", "openapi: 3."},
		{"go/index.html", "Client.Run"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(out, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), tc.want) {
				t.Errorf("%s lacks %q", tc.file, tc.want)
			}
		})
	}
}

func TestRunRefusesBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing openapi file", []string{"-openapi", "/nonexistent.yaml", "-version-file", "../../VERSION", "-out", t.TempDir()}, "read openapi"},
		{"bad -go", []string{"-go", "nodir"}, "DIR=TEXTFILE"},
		{"stray argument", []string{"extra"}, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := run(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}
