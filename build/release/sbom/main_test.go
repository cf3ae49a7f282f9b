package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSBOMListsWhatShips: the BOM has the binary with its hash, the modules linked into it (the
// test binary links BurntSushi/toml, at go.mod's version), the toolchain, and the Python package
// with its pinned dependencies; bad input is refused with a clear error.
func TestSBOMListsWhatShips(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pyproject := filepath.Join(dir, "pyproject.toml")
	write := func(version string) {
		body := "[project]\nname = \"agentbox\"\nversion = \"" + version + "\"\ndependencies = [\"certifi==2024.2.2\", \"idna>=3\"]\n"
		if err := os.WriteFile(pyproject, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("1.2.3")
	bom, err := build("1.2.3", "2026-12-01T00:00:00Z", pyproject, []string{self})
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, c := range bom.Components {
		refs = append(refs, c.Ref)
	}
	for _, want := range []string{"file:" + filepath.Base(self), "pkg:golang/github.com/BurntSushi/toml@v1.5.0",
		"pkg:pypi/agentbox@1.2.3", "pkg:pypi/certifi@2024.2.2", "pkg:pypi/idna"} {
		if !slices.Contains(refs, want) {
			t.Errorf("no component %s in %v", want, refs)
		}
	}
	if !slices.ContainsFunc(refs, func(r string) bool { return strings.HasPrefix(r, "pkg:golang/stdlib@go") }) {
		t.Errorf("no toolchain component in %v", refs)
	}
	if h := bom.Components[0].Hashes; len(h) != 1 || len(h[0].Content) != 64 {
		t.Errorf("binary hashes %v, want one SHA-256", h)
	}
	again, _ := build("1.2.3", "2026-12-01T00:00:00Z", pyproject, []string{self})
	if again.Serial != bom.Serial || !strings.HasPrefix(bom.Serial, "urn:uuid:") {
		t.Errorf("serial %q then %q: want one urn:uuid for one release", bom.Serial, again.Serial)
	}

	bad := []struct {
		name, version string
		bins          []string
		want          string
	}{
		{"not semver", "1.2", []string{self}, "want SemVer"},
		{"no binaries", "1.2.3", nil, "no binaries"},
		{"not a go binary", "1.2.3", []string{pyproject}, "build information"},
		{"sdk version differs", "1.2.4", []string{self}, "want the release's"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			if _, err := build(c.version, "", pyproject, c.bins); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one containing %q", err, c.want)
			}
		})
	}
}
