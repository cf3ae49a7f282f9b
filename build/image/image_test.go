package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// fixture is a small stand-in for the release's inputs: a static binary of this machine's
// architecture (the test binary's own build of a tiny program) for agentbox and runsc, and a root
// filesystem tree with what a layer must carry faithfully.
type fixture struct {
	dir, bin, rootfs string
	opts             options
}

// staticDir holds staticBin's executable once built; TestMain removes it.
var staticDir string

// staticBin is one static executable shared by the tests (building it costs a second or two).
var staticBin = func() func(t *testing.T) string {
	var path string
	var err error
	return func(t *testing.T) string {
		t.Helper()
		if path == "" && err == nil {
			dir, derr := os.MkdirTemp("", "image-test-bin-")
			if derr != nil {
				t.Fatal(derr)
			}
			staticDir = dir // TestMain removes it
			src := filepath.Join(dir, "main.go")
			os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644)
			os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\ngo 1.24\n"), 0o644)
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "static"), ".")
			cmd.Dir, cmd.Env = dir, append(os.Environ(), "CGO_ENABLED=0")
			if out, cerr := cmd.CombinedOutput(); cerr != nil {
				err = errors.New(string(out))
			} else {
				path = filepath.Join(dir, "static")
			}
		}
		if err != nil {
			t.Fatalf("building a static test binary: %v", err)
		}
		return path
	}
}()

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	fx := &fixture{dir: dir, bin: staticBin(t), rootfs: filepath.Join(dir, "rootfs")}
	old := time.Date(2023, 4, 5, 6, 7, 8, 900, time.UTC) // sub-second part: layers keep whole seconds
	mk := func(rel string, data string, mode os.FileMode) {
		p := filepath.Join(fx.rootfs, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode) // past the umask
		os.Chtimes(p, old, old)
	}
	mk("usr/bin/python3", "#!python\n", 0o755)
	mk("etc/ssl/certs/ca-certificates.crt", "-----BEGIN CERTIFICATE-----\n", 0o644)
	mk("usr/lib/python3/dist-packages/numpy/__init__.py", "x = 1\n", 0o644)
	mk("usr/bin/passwd", "setuid\n", 0o755|os.ModeSetuid)
	mk("usr/share/a/same", "one inode, two names\n", 0o644)
	if err := os.Link(filepath.Join(fx.rootfs, "usr/share/a/same"), filepath.Join(fx.rootfs, "usr/share/b-same")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("python3", filepath.Join(fx.rootfs, "usr/bin/python")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(fx.rootfs, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(fx.rootfs, "tmp"), 0o777|os.ModeSticky)
	fx.opts = options{agentbox: fx.bin, runsc: fx.bin, rootfs: fx.rootfs, version: "1.2.3", revision: "0123abcd",
		source: "https://example.com/agentbox", created: "2026-12-01T17:00:00Z", arch: runtime.GOARCH,
		out: filepath.Join(dir, "image.tar")}
	return fx
}

func (fx *fixture) build(t *testing.T, mutate func(o *options)) (*result, *archive) {
	t.Helper()
	o := fx.opts
	if mutate != nil {
		mutate(&o)
	}
	res, err := build(o)
	if err != nil {
		t.Fatal(err)
	}
	return res, openArchive(t, o.out)
}

// layerFiles lists a layer's entries by name.
func layerFiles(t *testing.T, a *archive, i int) map[string]*tar.Header {
	t.Helper()
	tr, done, err := a.layerTar(i)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	files := map[string]*tar.Header{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(hdr.Name, "/")] = hdr
	}
}

func TestTwoBuildsOfTheSameInputsAreByteIdentical(t *testing.T) {
	fx := newFixture(t)
	first, _ := fx.build(t, nil)
	a, err := os.ReadFile(fx.opts.out)
	if err != nil {
		t.Fatal(err)
	}
	// Another moment, and the inputs' access and change times touched: none of it may show.
	time.Sleep(1100 * time.Millisecond)
	now := time.Now()
	os.Chtimes(filepath.Join(fx.rootfs, "usr/bin/passwd"), now, time.Date(2023, 4, 5, 6, 7, 8, 0, time.UTC))
	second, _ := fx.build(t, func(o *options) { o.out = filepath.Join(fx.dir, "again.tar") })
	b, err := os.ReadFile(filepath.Join(fx.dir, "again.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if first.digest != second.digest || !bytes.Equal(a, b) {
		t.Fatalf("two builds differ: manifest %s vs %s, archives equal: %v", first.digest, second.digest, bytes.Equal(a, b))
	}
	// And a changed input does change the digest (the comparison above can fail).
	third, _ := fx.build(t, func(o *options) { o.out, o.revision = filepath.Join(fx.dir, "other.tar"), "fedcba98" })
	if third.digest == first.digest {
		t.Fatal("a different revision label gave the same image digest")
	}
}

func TestRootfsLayerDependsOnlyOnTheTree(t *testing.T) {
	// Another version, commit and build time: only the base, agentbox and config change; the
	// root filesystem's and runsc's layers are the same blobs, so a registry or docker keeps them.
	fx := newFixture(t)
	_, a := fx.build(t, nil)
	_, b := fx.build(t, func(o *options) {
		o.out, o.version, o.revision, o.created = filepath.Join(fx.dir, "next.tar"), "1.2.4", "99", "2027-01-02T03:04:05Z"
	})
	for i, name := range []string{"base", "rootfs", "runsc", "agentbox"} {
		same := a.manifest.Layers[i].Digest == b.manifest.Layers[i].Digest
		if want := name == "rootfs" || name == "runsc"; same != want {
			t.Errorf("layer %s: same digest across releases is %v, want %v", name, same, want)
		}
	}
}

func TestLayersKeepTheTreesFilesFaithfully(t *testing.T) {
	fx := newFixture(t)
	_, a := fx.build(t, nil)
	files := layerFiles(t, a, 1)
	pre := "opt/agentbox/heavy/rootfs/"
	old := time.Date(2023, 4, 5, 6, 7, 8, 0, time.UTC)
	tests := []struct {
		name  string
		check func(h *tar.Header) bool
		want  string
	}{
		{"source times kept to the second (the .pyc files depend on them)", func(h *tar.Header) bool {
			return h.ModTime.Equal(old)
		}, pre + "usr/lib/python3/dist-packages/numpy/__init__.py"},
		{"setuid bit kept", func(h *tar.Header) bool { return h.Mode == 0o4755 }, pre + "usr/bin/passwd"},
		{"sticky directory kept", func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir && h.Mode == 0o1777 }, pre + "tmp"},
		{"symbolic link kept", func(h *tar.Header) bool { return h.Typeflag == tar.TypeSymlink && h.Linkname == "python3" }, pre + "usr/bin/python"},
		{"second name of an inode is a hard link to the first", func(h *tar.Header) bool {
			return h.Typeflag == tar.TypeLink && h.Linkname == pre+"usr/share/a/same"
		}, pre + "usr/share/b-same"},
		{"no owner names (they differ between build machines)", func(h *tar.Header) bool {
			return h.Uname == "" && h.Gname == "" && h.AccessTime.IsZero() && h.ChangeTime.IsZero()
		}, pre + "usr/bin/python3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, ok := files[tt.want]
			if !ok {
				t.Fatalf("%s is not in the layer", tt.want)
			}
			if !tt.check(h) {
				t.Fatalf("%s: %+v", tt.want, h)
			}
		})
	}
	if h := files[pre+"usr/share/a/same"]; h == nil || h.Typeflag != tar.TypeReg || h.Size == 0 {
		t.Fatalf("the first name of a linked inode carries the content: %+v", h)
	}
}

func TestArchiveIsAnOCILayoutAndADockerLoadArchive(t *testing.T) {
	fx := newFixture(t)
	res, a := fx.build(t, nil) // openArchive checked the layout's index, manifest, config and digests
	if a.index.Manifests[0].Digest != res.digest {
		t.Fatalf("index names %s, build says %s", a.index.Manifests[0].Digest, res.digest)
	}
	if got := a.index.Manifests[0].Annotations["io.containerd.image.name"]; got != "docker.io/library/agentbox:1.2.3" {
		t.Errorf("io.containerd.image.name = %q", got)
	}
	var dm []dockerManifest
	if err := json.Unmarshal(a.files["manifest.json"], &dm); err != nil || len(dm) != 1 {
		t.Fatalf("manifest.json: %v %s", err, a.files["manifest.json"])
	}
	if !slices.Equal(dm[0].RepoTags, []string{"agentbox:1.2.3"}) {
		t.Errorf("RepoTags %v", dm[0].RepoTags)
	}
	if dm[0].Config != blobPath(a.manifest.Config.Digest) {
		t.Errorf("docker's config %s, the OCI manifest's %s", dm[0].Config, a.manifest.Config.Digest)
	}
	for i, l := range a.manifest.Layers {
		if dm[0].Layers[i] != blobPath(l.Digest) {
			t.Errorf("docker layer %d is %s, OCI layer %s", i, dm[0].Layers[i], l.Digest)
		}
	}
	// Every layer's digest and diff_id hold (unpack checks both), and the image is whole.
	root := t.TempDir()
	if err := a.unpack(root); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"usr/local/bin/agentbox", "opt/agentbox/heavy/bin/runsc", "opt/agentbox/heavy/rootfs/usr/bin/python3",
		"etc/ssl/certs/ca-certificates.crt", "etc/passwd", "opt/agentbox/heavy/packages"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("unpacked image: %v", err)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("/tmp: %v %v", fi, err)
	}
}

func TestConfigRunsTheServer(t *testing.T) {
	fx := newFixture(t)
	_, a := fx.build(t, nil)
	c := a.config
	if c.Architecture != runtime.GOARCH || c.OS != "linux" || c.Created != "2026-12-01T17:00:00Z" {
		t.Errorf("platform/created: %s/%s %s", c.OS, c.Architecture, c.Created)
	}
	rc := c.Config
	if !slices.Equal(rc.Entrypoint, []string{"/usr/local/bin/agentbox", "serve"}) || !slices.Equal(rc.Cmd, []string{"--addr", "0.0.0.0:8080"}) {
		t.Errorf("entrypoint %q cmd %q", rc.Entrypoint, rc.Cmd)
	}
	if _, ok := rc.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("ExposedPorts %v", rc.ExposedPorts)
	}
	if _, ok := rc.Volumes["/var/lib/agentbox"]; !ok {
		t.Errorf("Volumes %v", rc.Volumes)
	}
	for k, want := range map[string]string{"org.opencontainers.image.version": "1.2.3", "org.opencontainers.image.revision": "0123abcd",
		"org.opencontainers.image.source": "https://example.com/agentbox", "org.opencontainers.image.licenses": "Apache-2.0"} {
		if rc.Labels[k] != want {
			t.Errorf("label %s = %q, want %q", k, rc.Labels[k], want)
		}
	}
	if !slices.Contains(rc.Env, "AGENTBOX_HEAVY_CACHE=/opt/agentbox/heavy") {
		t.Errorf("Env %q: the heavy tier would not find runsc and the root filesystem", rc.Env)
	}
	for _, e := range rc.Env {
		if strings.Contains(e, "KEY") || strings.Contains(e, "TOKEN") || strings.Contains(e, "SECRET") {
			t.Errorf("Env carries %q: keys are given at run time", e)
		}
	}
	if len(c.History) != 4 || len(c.RootFS.DiffIDs) != 4 {
		t.Errorf("history %d, diff_ids %d, want 4 layers", len(c.History), len(c.RootFS.DiffIDs))
	}
}

func TestBadInputIsRefusedClearly(t *testing.T) {
	fx := newFixture(t)
	script := filepath.Join(fx.dir, "script")
	os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
	tests := []struct {
		name   string
		mutate func(o *options)
		want   string
	}{
		{"missing flags", func(o *options) { o.agentbox, o.created = "", "" }, "-agentbox is required"},
		{"version not SemVer", func(o *options) { o.version = "v1" }, `-version "v1": want SemVer`},
		{"created not RFC 3339", func(o *options) { o.created = "yesterday" }, `-created "yesterday": want RFC 3339`},
		{"bad tag", func(o *options) { o.tag = "Agentbox" }, `-tag "Agentbox": want name:tag`},
		{"agentbox not an ELF binary", func(o *options) { o.agentbox = script }, "-agentbox " + script},
		{"runsc for another architecture", func(o *options) { o.arch = other }, "-agentbox " + fx.bin + ": a " + goArch[runtime.GOARCH].String()},
		{"not the heavy root filesystem", func(o *options) { o.rootfs = fx.dir }, "not the heavy tier's root filesystem (no /usr/bin/python3)"},
		{"no such root filesystem", func(o *options) { o.rootfs = filepath.Join(fx.dir, "nope") }, "-rootfs: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := fx.opts
			o.out = filepath.Join(t.TempDir(), "x.tar")
			tt.mutate(&o)
			_, err := build(o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
			if _, serr := os.Stat(o.out); serr == nil {
				t.Fatal("a refused build left an archive behind")
			}
		})
	}
}

func TestDynamicBinaryIsRefused(t *testing.T) {
	// The image has no C library: a binary built with cgo would not start in it.
	dyn, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(dyn)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	fx := newFixture(t)
	o := fx.opts
	o.runsc = dyn
	if _, err := build(o); err == nil || !strings.Contains(err.Error(), "dynamically linked, and the image has no C library") {
		t.Fatalf("err = %v", err)
	}
}

func TestDockerName(t *testing.T) {
	for in, want := range map[string]string{
		"agentbox:1.0":                    "docker.io/library/agentbox:1.0",
		"me/agentbox:1.0":                 "docker.io/me/agentbox:1.0",
		"ghcr.io/entersandbox/agentbox:1": "ghcr.io/entersandbox/agentbox:1",
		"localhost:5000/agentbox:1":       "localhost:5000/agentbox:1",
	} {
		if got := dockerName(in); got != want {
			t.Errorf("dockerName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLayerCacheReusesTheRootfsLayerAndGivesTheSameImage(t *testing.T) {
	fx := newFixture(t)
	os.WriteFile(filepath.Join(fx.rootfs, ".agentbox-complete"), nil, 0o644)
	cache := filepath.Join(fx.dir, "cache")
	plain, _ := fx.build(t, nil)
	first, _ := fx.build(t, func(o *options) { o.out, o.layerCache = filepath.Join(fx.dir, "c1.tar"), cache })
	second, _ := fx.build(t, func(o *options) { o.out, o.layerCache = filepath.Join(fx.dir, "c2.tar"), cache })
	if first.layers[1].cached || !second.layers[1].cached {
		t.Fatalf("rootfs layer cached: first build %v, second %v; want false, true", first.layers[1].cached, second.layers[1].cached)
	}
	for _, l := range []int{0, 2, 3} {
		if second.layers[l].cached {
			t.Errorf("layer %d (%s) came from the cache: only tree layers may", l, second.layers[l].comment)
		}
	}
	a, _ := os.ReadFile(fx.opts.out)
	b, _ := os.ReadFile(filepath.Join(fx.dir, "c2.tar"))
	if plain.digest != second.digest || !bytes.Equal(a, b) {
		t.Fatalf("a cached build differs from a plain one: %s vs %s", plain.digest, second.digest)
	}
	// A rebuilt root filesystem (build.sh writes its marker anew) is not taken from the cache.
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(filepath.Join(fx.rootfs, "usr/bin/new"), []byte("new\n"), 0o755)
	os.WriteFile(filepath.Join(fx.rootfs, ".agentbox-complete"), nil, 0o644)
	third, _ := fx.build(t, func(o *options) { o.out, o.layerCache = filepath.Join(fx.dir, "c3.tar"), cache })
	if third.layers[1].cached || third.layers[1].digest == second.layers[1].digest {
		t.Fatalf("a rebuilt root filesystem reused the old layer (cached %v)", third.layers[1].cached)
	}
}
