// Command image builds the agentbox server's container image, heavy tier included, without a
// container daemon or root: the static linux agentbox binary, gVisor's runsc and the heavy tier's
// root filesystem (both as build/heavy/build.sh cached them), CA certificates and a state volume, in
// four deterministic layers (see layer.go), written as one tar that is both an OCI image layout and
// a `docker load` archive (see oci.go). Two builds from the same inputs give the same bytes.
//
//	go run ./build/image -agentbox dist/agentbox-0.2.0-linux-amd64 -runsc ~/.cache/agentbox/heavy/bin/runsc \
//	    -rootfs ~/.cache/agentbox/heavy/rootfs -version 0.2.0 -revision $(git rev-parse HEAD) \
//	    -created 2026-12-01T17:00:00Z -out dist/agentbox-image-0.2.0.tar
//
// It prints the image's manifest digest. docs/container-image.md says how to run the image.
package main

import (
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

func main() {
	var o options
	flag.StringVar(&o.agentbox, "agentbox", "", "the static linux agentbox binary (CGO_ENABLED=0)")
	flag.StringVar(&o.runsc, "runsc", "", "gVisor's runsc (build/heavy/build.sh's bin/runsc)")
	flag.StringVar(&o.rootfs, "rootfs", "", "the heavy tier's root filesystem (build/heavy/build.sh's rootfs)")
	flag.StringVar(&o.version, "version", "", "the release's version (SemVer); the tag is agentbox:<version> unless -tag")
	flag.StringVar(&o.revision, "revision", "", "the commit the image is built from (a label)")
	flag.StringVar(&o.source, "source", "https://github.com/entersandbox/agentbox", "the source repository (a label)")
	flag.StringVar(&o.created, "created", "", "the build time (RFC 3339), e.g. the commit's: the image's date and its generated files' times")
	flag.StringVar(&o.tag, "tag", "", "the name docker load gives the image (default agentbox:<version>)")
	flag.StringVar(&o.arch, "arch", "amd64", "the image's architecture (the binaries' must match)")
	flag.StringVar(&o.out, "out", "", "the image archive to write (.tar)")
	flag.StringVar(&o.layerCache, "layer-cache", "", "directory keeping the root filesystem's compressed layer between builds (cache.go); empty: none")
	var docs string
	flag.StringVar(&docs, "docs", "LICENSE,THIRD_PARTY.md", "comma-separated files put in /usr/share/doc/agentbox")
	flag.Parse()
	if docs != "" {
		o.docs = strings.Split(docs, ",")
	}
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments %q", flag.Args()))
	}
	res, err := build(o)
	if err != nil {
		fail(err)
	}
	for _, l := range res.layers {
		from := ""
		if l.cached {
			from = " (from the layer cache)"
		}
		fmt.Fprintf(os.Stderr, "image: layer %-28s %s %6.1f MB%s\n", l.comment, l.digest[:19], float64(l.size)/1e6, from)
		if len(l.skipped) > 0 {
			fmt.Fprintf(os.Stderr, "image:   left out %d device nodes or sockets (runsc gives sandboxes their own /dev): %s\n", len(l.skipped), strings.Join(l.skipped, " "))
		}
	}
	fmt.Fprintf(os.Stderr, "image: %s %s (%.1f MB) in %s\n", o.out, res.tag, float64(res.size)/1e6, res.took.Round(100*time.Millisecond))
	fmt.Println(res.digest)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "image:", err)
	os.Exit(1)
}

// options are the build's inputs; every one but tag, source, arch and docs is required.
type options struct {
	agentbox, runsc, rootfs string
	version, revision       string
	source, created, tag    string
	arch, out               string
	docs                    []string // files for /usr/share/doc/agentbox; none is fine
	layerCache              string   // see cache.go; empty means every layer is written anew
}

// result is what build wrote.
type result struct {
	digest string // the image manifest's
	tag    string
	size   int64 // of the archive
	layers []layerInfo
	took   time.Duration
}

type layerInfo struct {
	comment string
	digest  string
	size    int64
	skipped []string
	cached  bool // taken from the layer cache
}

// Paths inside the image. The heavy tier finds runsc and the root filesystem through
// AGENTBOX_HEAVY_CACHE (internal/heavy's cacheDir), as it would in ~/.cache/agentbox/heavy.
const (
	heavyDir  = "opt/agentbox/heavy"
	binPath   = "usr/local/bin/agentbox"
	stateDir  = "/var/lib/agentbox" // the volume: heavy state (root's default /var/lib/agentbox/state), snapshots, audit, caches
	listen    = "0.0.0.0:8080"
	caBundle  = "etc/ssl/certs/ca-certificates.crt"
	shortName = "agentbox"
)

var (
	semver = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`)
	// tagRe is a reference with a tag: [registry/]name:tag.
	tagRe = regexp.MustCompile(`^[a-z0-9]+([._/-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// goArch is debug/elf's machine for a GOARCH the image may be built for.
var goArch = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

func (o *options) check() error {
	var errs []error
	need := func(v, flagName string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("-%s is required", flagName))
		}
	}
	need(o.agentbox, "agentbox")
	need(o.runsc, "runsc")
	need(o.rootfs, "rootfs")
	need(o.version, "version")
	need(o.revision, "revision")
	need(o.created, "created")
	need(o.out, "out")
	if o.version != "" && !semver.MatchString(o.version) {
		errs = append(errs, fmt.Errorf("-version %q: want SemVer such as 1.2.3", o.version))
	}
	if o.created != "" {
		if _, err := time.Parse(time.RFC3339, o.created); err != nil {
			errs = append(errs, fmt.Errorf("-created %q: want RFC 3339 such as 2026-12-01T17:00:00Z", o.created))
		}
	}
	if _, ok := goArch[o.arch]; !ok {
		errs = append(errs, fmt.Errorf("-arch %q: want amd64 or arm64", o.arch))
	}
	if o.tag == "" && o.version != "" {
		o.tag = shortName + ":" + o.version
	}
	if o.tag != "" && !tagRe.MatchString(o.tag) {
		errs = append(errs, fmt.Errorf("-tag %q: want name:tag such as agentbox:1.2.3", o.tag))
	}
	return errors.Join(errs...)
}

// checkStatic refuses a binary the image cannot run: another architecture's, or one linked against
// a C library the image does not have.
func checkStatic(path, what string, want elf.Machine) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("-%s %s: %w", what, path, err)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("-%s %s: a %v binary, the image is %v", what, path, f.Machine, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("-%s %s: dynamically linked, and the image has no C library (build it with CGO_ENABLED=0)", what, path)
		}
	}
	return nil
}

// build writes the image archive o describes.
func build(o options) (*result, error) {
	start := time.Now()
	if err := o.check(); err != nil {
		return nil, err
	}
	machine := goArch[o.arch]
	if err := checkStatic(o.agentbox, "agentbox", machine); err != nil {
		return nil, err
	}
	if err := checkStatic(o.runsc, "runsc", machine); err != nil {
		return nil, err
	}
	// runsc refuses a root reached through a symbolic link, and a tree is walked from its real path.
	rootfs, err := filepath.EvalSymlinks(o.rootfs)
	if err != nil {
		return nil, fmt.Errorf("-rootfs: %w", err)
	}
	for _, p := range []string{"usr/bin/python3", caBundle} {
		if _, err := os.Stat(filepath.Join(rootfs, p)); err != nil {
			return nil, fmt.Errorf("-rootfs %s: not the heavy tier's root filesystem (no /%s); build it with build/heavy/build.sh", o.rootfs, p)
		}
	}
	created, _ := time.Parse(time.RFC3339, o.created)
	created = created.UTC()
	specs := o.layers(rootfs)
	work, err := os.MkdirTemp(filepath.Dir(o.out), ".image-")
	if err != nil {
		return nil, fmt.Errorf("work directory: %w", err)
	}
	defer os.RemoveAll(work)
	res := &result{tag: o.tag}
	var blobs []*layerBlob
	var history []History
	var diffIDs []string
	for _, spec := range specs {
		l, cached, err := writeLayerCached(work, o.layerCache, spec, created)
		if err != nil {
			return nil, err
		}
		blobs = append(blobs, l)
		diffIDs = append(diffIDs, l.diffID)
		history = append(history, History{Created: created.Format(time.RFC3339), CreatedBy: "build/image: " + spec.comment})
		res.layers = append(res.layers, layerInfo{comment: spec.comment, digest: l.digest, size: l.size, skipped: l.skipped, cached: cached})
	}
	labels := map[string]string{
		"org.opencontainers.image.title":       "agentbox",
		"org.opencontainers.image.description": "agentbox server: sandboxed code execution for AI agents, nano (WebAssembly) and heavy (gVisor) tiers",
		"org.opencontainers.image.version":     o.version,
		"org.opencontainers.image.revision":    o.revision,
		"org.opencontainers.image.source":      o.source,
		"org.opencontainers.image.licenses":    "Apache-2.0",
		"org.opencontainers.image.created":     created.Format(time.RFC3339),
	}
	cfg := ImageConfig{Created: created.Format(time.RFC3339), Architecture: o.arch, OS: "linux",
		Config: RuntimeConfig{
			// root: runsc needs it to make the sandboxes' namespaces and cgroups.
			User:         "0:0",
			ExposedPorts: map[string]struct{}{"8080/tcp": {}},
			// No secret: the API key comes at run time (AGENTBOX_API_KEY or --api-key-file), and the
			// server refuses to listen beyond loopback without one.
			Env: []string{
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"AGENTBOX_HEAVY_CACHE=/" + heavyDir,
				"XDG_CACHE_HOME=" + stateDir + "/cache", // the nano tier's compiled interpreter and snapshot outlive the container
				"HOME=/root",
			},
			Entrypoint: []string{"/" + binPath, "serve"},
			Cmd:        []string{"--addr", listen},
			Volumes:    map[string]struct{}{stateDir: {}},
			WorkingDir: "/",
			Labels:     labels,
			StopSignal: "SIGTERM",
		},
		RootFS:  RootFS{Type: "layers", DiffIDs: diffIDs},
		History: history,
	}
	annotations := map[string]string{}
	for k, v := range labels {
		annotations[k] = v
	}
	tmp := o.out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return nil, fmt.Errorf("-out: %w", err)
	}
	defer os.Remove(tmp)
	counted := &countingWriter{w: f}
	if res.digest, err = writeArchive(counted, cfg, blobs, o.tag, annotations, created); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing %s: %w", o.out, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("writing %s: %w", o.out, err)
	}
	if err := os.Rename(tmp, o.out); err != nil {
		return nil, err
	}
	res.size, res.took = counted.n, time.Since(start)
	return res, nil
}

// layers are the image's, least often changed first, so that a new release of agentbox shares the
// 1.6 GB root filesystem's layer with the last one.
func (o *options) layers(rootfs string) []layerSpec {
	base := layerSpec{comment: "base (users, CA certificates, directories)", entries: []entry{
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\n")},
		{name: "etc/nsswitch.conf", mode: 0o644, data: []byte("hosts: files dns\n")},
		// The egress proxy verifies upstream servers against the system roots (Go reads this file);
		// the root filesystem's are Debian's ca-certificates, listed in the SBOM with its packages.
		{name: caBundle, mode: 0o644, src: filepath.Join(rootfs, caBundle)},
		{name: "tmp", mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{name: "root", mode: fs.ModeDir | 0o700},
		{name: strings.TrimPrefix(stateDir, "/"), mode: fs.ModeDir | 0o755},
		// The heavy tier creates its package cache beside runsc; made here so a read-only container
		// root does not stop it.
		{name: heavyDir + "/packages", mode: fs.ModeDir | 0o755},
	}}
	for _, d := range o.docs {
		base.entries = append(base.entries, entry{name: "usr/share/doc/agentbox/" + filepath.Base(d), mode: 0o644, src: d})
	}
	return []layerSpec{
		base,
		{comment: "heavy tier root filesystem", trees: []tree{{dir: rootfs, prefix: heavyDir + "/rootfs"}}},
		{comment: "runsc (gVisor)", entries: []entry{{name: heavyDir + "/bin/runsc", mode: 0o755, src: o.runsc}}, fixedTime: true},
		{comment: "agentbox " + o.version, entries: []entry{{name: binPath, mode: 0o755, src: o.agentbox}}},
	}
}
