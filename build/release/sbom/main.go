// Command sbom writes a CycloneDX 1.5 JSON software bill of materials of a release: each agentbox
// binary given (with its SHA-256 and the Go modules and toolchain linked into it, read from the
// build information the Go linker embeds, which go.mod and go.sum decided) and the Python SDK (from
// its pyproject.toml: the package and its dependencies, of which there are none today).
//
//	go run ./build/release/sbom -version 0.2.0 -date 2026-12-01T00:00:00Z -pyproject sdk/python/pyproject.toml dist/agentbox-*-linux-amd64 ...
package main

import (
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

func main() {
	version := flag.String("version", "", "the release's version (SemVer)")
	date := flag.String("date", "", "the build date (RFC 3339), the BOM's timestamp")
	pyproject := flag.String("pyproject", "", "the Python SDK's pyproject.toml")
	var img imageInputs
	flag.StringVar(&img.archive, "image", "", "the container image archive (release.sh --image), listed with what it carries")
	flag.StringVar(&img.digest, "image-digest", "", "the image's manifest digest")
	flag.StringVar(&img.runsc, "image-runsc", "", "the runsc the image carries")
	flag.StringVar(&img.rootfs, "image-rootfs", "", "the heavy root filesystem the image carries (its Debian packages are listed)")
	flag.Parse()
	bom, err := build(*version, *date, *pyproject, flag.Args())
	if err == nil && img.archive != "" {
		err = addImage(bom, *version, img)
	}
	if err == nil {
		err = write(os.Stdout, bom)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sbom:", err)
		os.Exit(1)
	}
}

// BOM is the part of CycloneDX 1.5 we fill in.
type BOM struct {
	Format       string       `json:"bomFormat"`
	Spec         string       `json:"specVersion"`
	Serial       string       `json:"serialNumber"`
	Version      int          `json:"version"`
	Metadata     Metadata     `json:"metadata"`
	Components   []Component  `json:"components"`
	Dependencies []Dependency `json:"dependencies"`
}

type Metadata struct {
	Timestamp string    `json:"timestamp,omitempty"`
	Tools     Tools     `json:"tools"`
	Component Component `json:"component"`
}

type Tools struct {
	Components []Component `json:"components"`
}

type Component struct {
	Type       string     `json:"type"`
	Ref        string     `json:"bom-ref,omitempty"`
	Name       string     `json:"name"`
	Version    string     `json:"version,omitempty"`
	PURL       string     `json:"purl,omitempty"`
	Hashes     []Hash     `json:"hashes,omitempty"`
	Licenses   []License  `json:"licenses,omitempty"`
	Properties []Property `json:"properties,omitempty"`
}

type Hash struct {
	Alg     string `json:"alg"`
	Content string `json:"content"`
}

type License struct {
	License struct {
		ID string `json:"id"`
	} `json:"license"`
}

type Property struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

type Dependency struct {
	Ref       string   `json:"ref"`
	DependsOn []string `json:"dependsOn"`
}

// reqName is a PEP 508 requirement's distribution name.
var reqName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*`)

var semver = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`)

func build(version, date, pyproject string, binaries []string) (*BOM, error) {
	if !semver.MatchString(version) {
		return nil, fmt.Errorf("-version %q: want SemVer such as 1.2.3", version)
	}
	if len(binaries) == 0 {
		return nil, errors.New("no binaries given")
	}
	root := Component{Type: "application", Name: "agentbox", Version: version,
		Ref: "pkg:golang/github.com/entersandbox/agentbox@v" + version, PURL: "pkg:golang/github.com/entersandbox/agentbox@v" + version,
		Licenses: apache()}
	bom := &BOM{Format: "CycloneDX", Spec: "1.5", Version: 1,
		Metadata: Metadata{Timestamp: date, Component: root,
			Tools: Tools{Components: []Component{{Type: "application", Name: "agentbox build/release/sbom"}}}}}
	seen := map[string]bool{}
	add := func(c Component) {
		if !seen[c.Ref] {
			seen[c.Ref] = true
			bom.Components = append(bom.Components, c)
		}
	}
	rootDeps := Dependency{Ref: root.Ref}
	digest := sha256.New()
	for _, bin := range binaries {
		c, mods, err := binary(bin, version)
		if err != nil {
			return nil, err
		}
		digest.Write([]byte(c.Hashes[0].Content))
		add(c)
		dep := Dependency{Ref: c.Ref}
		for _, m := range mods {
			add(m)
			dep.DependsOn = append(dep.DependsOn, m.Ref)
		}
		bom.Dependencies = append(bom.Dependencies, dep)
		rootDeps.DependsOn = append(rootDeps.DependsOn, c.Ref)
	}
	if pyproject != "" {
		py, deps, err := python(pyproject, version)
		if err != nil {
			return nil, err
		}
		add(py)
		for _, d := range deps {
			add(d)
		}
		bom.Dependencies = append(bom.Dependencies, Dependency{Ref: py.Ref, DependsOn: refs(deps)})
		rootDeps.DependsOn = append(rootDeps.DependsOn, py.Ref)
	}
	bom.Dependencies = append([]Dependency{rootDeps}, bom.Dependencies...)
	// The serial number is derived from what the BOM describes, so one release always gets the same one.
	sum := digest.Sum([]byte(version))
	sum[6], sum[8] = sum[6]&0x0f|0x50, sum[8]&0x3f|0x80 // an RFC 9562 version 5 layout
	bom.Serial = fmt.Sprintf("urn:uuid:%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
	return bom, nil
}

// binary describes one Go executable and the modules linked into it.
func binary(path, version string) (Component, []Component, error) {
	f, err := os.Open(path)
	if err != nil {
		return Component{}, nil, fmt.Errorf("opening binary: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return Component{}, nil, fmt.Errorf("hashing %s: %w", path, err)
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return Component{}, nil, fmt.Errorf("reading the build information of %s: %w", path, err)
	}
	name := filepath.Base(path)
	c := Component{Type: "file", Name: name, Version: version, Ref: "file:" + name,
		Hashes: []Hash{{Alg: "SHA-256", Content: hex.EncodeToString(h.Sum(nil))}}}
	for _, s := range bi.Settings {
		if s.Key == "GOOS" || s.Key == "GOARCH" || s.Key == "CGO_ENABLED" {
			c.Properties = append(c.Properties, Property{Name: "go:" + s.Key, Value: s.Value})
		}
	}
	mods := []Component{{Type: "library", Name: "stdlib", Version: bi.GoVersion,
		Ref: "pkg:golang/stdlib@" + bi.GoVersion, PURL: "pkg:golang/stdlib@" + bi.GoVersion}}
	for _, d := range bi.Deps {
		if d.Replace != nil {
			d = d.Replace
		}
		m := Component{Type: "library", Name: d.Path, Version: d.Version,
			Ref: "pkg:golang/" + d.Path + "@" + d.Version, PURL: "pkg:golang/" + d.Path + "@" + d.Version}
		if d.Sum != "" {
			m.Properties = []Property{{Name: "go:sum", Value: d.Sum}}
		}
		mods = append(mods, m)
	}
	return c, mods, nil
}

// python describes the SDK from its pyproject.toml; its version must be the release's.
func python(path, version string) (Component, []Component, error) {
	var p struct {
		Project struct {
			Name         string   `toml:"name"`
			Version      string   `toml:"version"`
			Dependencies []string `toml:"dependencies"`
		} `toml:"project"`
	}
	if _, err := toml.DecodeFile(path, &p); err != nil {
		return Component{}, nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if p.Project.Version != version {
		return Component{}, nil, fmt.Errorf("%s: version %q, want the release's %q", path, p.Project.Version, version)
	}
	purl := "pkg:pypi/" + p.Project.Name + "@" + p.Project.Version
	c := Component{Type: "library", Name: p.Project.Name, Version: p.Project.Version, Ref: purl, PURL: purl, Licenses: apache()}
	var deps []Component
	for _, d := range p.Project.Dependencies {
		// A requirement such as "requests>=2"; only an exact pin names one version.
		name := reqName.FindString(strings.TrimSpace(d))
		if name == "" {
			return Component{}, nil, fmt.Errorf("%s: dependency %q has no package name", path, d)
		}
		_, pinned, _ := strings.Cut(d, "==")
		purl := "pkg:pypi/" + strings.ToLower(name)
		if pinned != "" {
			purl += "@" + strings.TrimSpace(pinned)
		}
		deps = append(deps, Component{Type: "library", Name: name, Version: strings.TrimSpace(pinned), Ref: purl, PURL: purl,
			Properties: []Property{{Name: "python:requirement", Value: d}}})
	}
	return c, deps, nil
}

func refs(cs []Component) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.Ref)
	}
	return slices.Compact(out)
}

func apache() []License {
	var l License
	l.License.ID = "Apache-2.0"
	return []License{l}
}

func write(w io.Writer, bom *BOM) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(bom); err != nil {
		return fmt.Errorf("writing the BOM: %w", err)
	}
	return nil
}
