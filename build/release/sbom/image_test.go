package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSBOMListsTheImageAndItsPackages: with -image the BOM has the image archive (its SHA-256 and
// manifest digest), which depends on the linux/amd64 binary, on runsc with its modules, and on each
// Debian package installed in the root filesystem (not the removed ones).
func TestSBOMListsTheImageAndItsPackages(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "agentbox-1.2.3-linux-amd64")
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, b, 0o755)
	archive := filepath.Join(dir, "agentbox-image-1.2.3.tar")
	os.WriteFile(archive, []byte("not really a tar"), 0o644)
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(rootfs, "var/lib/dpkg"), 0o755)
	os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "etc/os-release"), []byte("NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n"), 0o644)
	os.WriteFile(filepath.Join(rootfs, "var/lib/dpkg/status"), []byte(`Package: python3.11
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u6
Description: an interpreter
 with a continuation line: that is not a field

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: tzdata
Status: install ok installed
Architecture: all
Version: 1:2025b-0+deb12u2
`), 0o644)
	bom, err := build("1.2.3", "2026-12-01T00:00:00Z", "", []string{bin})
	if err != nil {
		t.Fatal(err)
	}
	if err := addImage(bom, "1.2.3", imageInputs{archive: archive, digest: "sha256:abc", runsc: self, rootfs: rootfs}); err != nil {
		t.Fatal(err)
	}
	byRef := map[string]Component{}
	for _, c := range bom.Components {
		byRef[c.Ref] = c
	}
	img, ok := byRef["file:agentbox-image-1.2.3.tar"]
	if !ok || img.Type != "container" || len(img.Hashes) != 1 || len(img.Hashes[0].Content) != 64 {
		t.Fatalf("image component %+v", img)
	}
	if !slices.Contains(img.Properties, Property{Name: "oci:manifest-digest", Value: "sha256:abc"}) {
		t.Errorf("image properties %v", img.Properties)
	}
	var deps []string
	for _, d := range bom.Dependencies {
		if d.Ref == img.Ref {
			deps = d.DependsOn
		}
	}
	for _, want := range []string{"file:agentbox-1.2.3-linux-amd64", "file:runsc",
		"pkg:deb/debian/python3.11@3.11.2-6%2Bdeb12u6?arch=amd64&distro=debian-12",
		"pkg:deb/debian/tzdata@1%3A2025b-0%2Bdeb12u2?arch=all&distro=debian-12"} {
		if !slices.Contains(deps, want) {
			t.Errorf("the image does not depend on %s: %v", want, deps)
		}
		if _, ok := byRef[want]; !ok {
			t.Errorf("no component %s", want)
		}
	}
	if slices.ContainsFunc(deps, func(r string) bool { return strings.Contains(r, "/gone@") }) {
		t.Errorf("a removed package is listed: %v", deps)
	}
	if !slices.Contains(bom.Dependencies[0].DependsOn, img.Ref) {
		t.Errorf("the release does not depend on the image: %v", bom.Dependencies[0].DependsOn)
	}

	t.Run("refused without the linux/amd64 binary", func(t *testing.T) {
		bom, err := build("1.2.3", "2026-12-01T00:00:00Z", "", []string{self})
		if err != nil {
			t.Fatal(err)
		}
		err = addImage(bom, "1.2.3", imageInputs{archive: archive})
		if err == nil || !strings.Contains(err.Error(), "linux/amd64 agentbox binary") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("refused without a dpkg status", func(t *testing.T) {
		bom, _ := build("1.2.3", "2026-12-01T00:00:00Z", "", []string{bin})
		err := addImage(bom, "1.2.3", imageInputs{archive: archive, rootfs: dir})
		if err == nil || !strings.Contains(err.Error(), "-image-rootfs") {
			t.Fatalf("err = %v", err)
		}
	})
}
