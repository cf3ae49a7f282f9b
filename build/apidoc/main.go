// Command apidoc writes the static API reference (and, given `go doc -all` output, the Go SDK's page)
// that `make docs` puts in dist/docs. It is a build tool, not part of agentbox: the shipped binary
// does not carry the generator or libopenapi.
//
//	go run ./build/apidoc -openapi internal/server/openapi.yaml -version-file VERSION -out dist/docs \
//	    -go .=dist/docs/go/agentbox.txt
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/entersandbox/agentbox/internal/apidoc"
)

type goPkgs []apidoc.GoPackage

func (g *goPkgs) String() string { return fmt.Sprint(*g) }

func (g *goPkgs) Set(v string) error {
	dir, textFile, ok := strings.Cut(v, "=")
	if !ok || dir == "" || textFile == "" {
		return errors.New("want DIR=TEXTFILE (the package's directory and its `go doc -all` output)")
	}
	text, err := os.ReadFile(textFile)
	if err != nil {
		return err
	}
	*g = append(*g, apidoc.GoPackage{Dir: dir, DocText: string(text)})
	return nil
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(os.Args[1:]); err != nil {
		log.Error("apidoc failed", "err", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("apidoc", flag.ContinueOnError)
	spec := fs.String("openapi", "internal/server/openapi.yaml", "the OpenAPI document")
	versionFile := fs.String("version-file", "VERSION", "file holding the release version shown in the titles")
	out := fs.String("out", "dist/docs", "output directory: api/index.html (+ api/openapi.yaml) and go/index.html")
	var pkgs goPkgs
	fs.Var(&pkgs, "go", "DIR=TEXTFILE: a Go package's directory and its `go doc -all` output (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	version, err := os.ReadFile(*versionFile)
	if err != nil {
		return fmt.Errorf("read version: %w", err)
	}
	doc, err := os.ReadFile(*spec)
	if err != nil {
		return fmt.Errorf("read openapi: %w", err)
	}
	opts := apidoc.Options{Version: strings.TrimSpace(string(version)), SpecHref: "openapi.yaml"}
	var page bytes.Buffer
	if err := apidoc.Render(&page, doc, opts); err != nil {
		return err
	}
	apiDir := filepath.Join(*out, "api")
	if err := os.MkdirAll(apiDir, 0o755); err != nil {
		return fmt.Errorf("create output: %w", err)
	}
	if err := os.WriteFile(filepath.Join(apiDir, "index.html"), page.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write api reference: %w", err)
	}
	if err := os.WriteFile(filepath.Join(apiDir, "openapi.yaml"), doc, 0o644); err != nil {
		return fmt.Errorf("write openapi copy: %w", err)
	}
	if len(pkgs) == 0 {
		return nil
	}
	var goPage bytes.Buffer
	if err := apidoc.RenderGo(&goPage, opts.Version, pkgs); err != nil {
		return err
	}
	goDir := filepath.Join(*out, "go")
	if err := os.MkdirAll(goDir, 0o755); err != nil {
		return fmt.Errorf("create output: %w", err)
	}
	if err := os.WriteFile(filepath.Join(goDir, "index.html"), goPage.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write go reference: %w", err)
	}
	return nil
}
