package main

import (
	"bufio"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// imageInputs describe the container image (release.sh --image): the archive, its manifest digest,
// and the runsc and heavy root filesystem it was built from.
type imageInputs struct {
	archive, digest, runsc, rootfs string
}

// addImage lists the image as a container component that depends on the linux/amd64 agentbox
// binary already in bom, on runsc (with the Go modules linked into it) and on every Debian package
// installed in the heavy root filesystem (from its dpkg status file, as purl pkg:deb).
func addImage(bom *BOM, version string, in imageInputs) error {
	sum, err := fileSHA256(in.archive)
	if err != nil {
		return err
	}
	name := filepath.Base(in.archive)
	img := Component{Type: "container", Name: "agentbox", Version: version, Ref: "file:" + name,
		Hashes: []Hash{{Alg: "SHA-256", Content: sum}}, Licenses: apache(),
		Properties: []Property{{Name: "oci:archive", Value: name}}}
	if in.digest != "" {
		img.Properties = append(img.Properties, Property{Name: "oci:manifest-digest", Value: in.digest})
	}
	dep := Dependency{Ref: img.Ref}
	for _, c := range bom.Components {
		if c.Type == "file" && strings.HasSuffix(c.Name, "-linux-amd64") {
			dep.DependsOn = append(dep.DependsOn, c.Ref)
		}
	}
	if len(dep.DependsOn) == 0 {
		return fmt.Errorf("-image: the linux/amd64 agentbox binary the image carries is not among the binaries given")
	}
	var added []Component
	if in.runsc != "" {
		runsc, mods, err := binary(in.runsc, "")
		if err != nil {
			return fmt.Errorf("-image-runsc: %w", err)
		}
		bi, err := buildinfo.ReadFile(in.runsc)
		if err != nil {
			return fmt.Errorf("-image-runsc: %w", err)
		}
		runsc.Name, runsc.Ref, runsc.Version = "runsc", "file:runsc", bi.Main.Version
		runsc.PURL = "pkg:golang/gvisor.dev/gvisor@" + bi.Main.Version
		added = append(added, runsc)
		added = append(added, mods...)
		dep.DependsOn = append(dep.DependsOn, runsc.Ref)
		bom.Dependencies = append(bom.Dependencies, Dependency{Ref: runsc.Ref, DependsOn: refs(mods)})
	}
	if in.rootfs != "" {
		debs, err := dpkgPackages(in.rootfs)
		if err != nil {
			return fmt.Errorf("-image-rootfs: %w", err)
		}
		added = append(added, debs...)
		dep.DependsOn = append(dep.DependsOn, refs(debs)...)
	}
	seen := map[string]bool{}
	for _, c := range bom.Components {
		seen[c.Ref] = true
	}
	bom.Components = append(bom.Components, img)
	for _, c := range added {
		if !seen[c.Ref] {
			seen[c.Ref] = true
			bom.Components = append(bom.Components, c)
		}
	}
	bom.Dependencies = append(bom.Dependencies, dep)
	bom.Dependencies[0].DependsOn = append(bom.Dependencies[0].DependsOn, img.Ref)
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("-image: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("-image: hashing %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// dpkgPackages lists the packages installed in a Debian root filesystem.
func dpkgPackages(rootfs string) ([]Component, error) {
	distro := "debian"
	if b, err := os.ReadFile(filepath.Join(rootfs, "etc", "os-release")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VERSION_ID="); ok {
				distro = "debian-" + strings.Trim(v, `"`)
			}
		}
	}
	f, err := os.Open(filepath.Join(rootfs, "var", "lib", "dpkg", "status"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Component
	fields := map[string]string{}
	flush := func() {
		if fields["Package"] != "" && strings.HasSuffix(fields["Status"], " installed") {
			purl := "pkg:deb/debian/" + fields["Package"] + "@" + purlEscape(fields["Version"]) + "?arch=" + fields["Architecture"] + "&distro=" + distro
			out = append(out, Component{Type: "library", Name: fields["Package"], Version: fields["Version"], Ref: purl, PURL: purl})
		}
		clear(fields)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			flush()
			continue
		}
		if k, v, ok := strings.Cut(line, ": "); ok && !strings.HasPrefix(line, " ") {
			fields[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	flush()
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no installed packages in var/lib/dpkg/status", rootfs)
	}
	return out, nil
}

// purlEscape percent-encodes what a purl version may not hold literally (Debian epochs' colon, '+').
func purlEscape(v string) string {
	return strings.NewReplacer("%", "%25", ":", "%3A", "+", "%2B", "?", "%3F", "#", "%23").Replace(v)
}
