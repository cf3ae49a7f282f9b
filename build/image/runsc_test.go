package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/internal/heavy"
)

// integrationEnv turns on the test that runs the image; CI sets it (as for internal/heavy/integration).
const integrationEnv = "AGENTBOX_INTEGRATION"

// imageEnv names a built image archive to test (release-check.sh passes dist's); without it the
// test builds one from this checkout and build/heavy's cache.
const imageEnv = "AGENTBOX_IMAGE"

// heavyCache is where build/heavy/build.sh keeps runsc and the root filesystem.
func heavyCache() string {
	if d := os.Getenv("AGENTBOX_HEAVY_CACHE"); d != "" {
		return d
	}
	base, _ := os.UserCacheDir()
	return filepath.Join(base, "agentbox", "heavy")
}

// needIntegration skips without AGENTBOX_INTEGRATION=1, saying so, and fails when it is set but a
// piece the test needs is missing.
func needIntegration(t *testing.T) (runsc, rootfs string) {
	t.Helper()
	on, err := strconv.ParseBool(cmp.Or(os.Getenv(integrationEnv), "0"))
	if err != nil {
		t.Fatalf("%s=%q: want 1 or 0", integrationEnv, os.Getenv(integrationEnv))
	}
	if !on {
		t.Skipf("runs the image under runsc: set %s=1 (needs root, ip(8), and build/heavy/build.sh's runsc and root filesystem)", integrationEnv)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("%s=1: running the image under runsc needs root", integrationEnv)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("%s=1: the test network namespace is made with ip(8) (iproute2): %v", integrationEnv, err)
	}
	runsc, rootfs = filepath.Join(heavyCache(), "bin", "runsc"), filepath.Join(heavyCache(), "rootfs")
	for _, p := range []string{runsc, filepath.Join(rootfs, "usr", "bin", "python3")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=1: %v (run build/heavy/build.sh)", integrationEnv, err)
		}
	}
	return runsc, rootfs
}

// shared is the image unpacked once for the tests that run it (TestMain removes it).
var shared struct {
	once        sync.Once
	dir, rootfs string
	config      ImageConfig
	err         error
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, dir := range []string{shared.dir, staticDir} {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

// unpackedImage is the image (AGENTBOX_IMAGE's, or one built from this checkout) unpacked into a
// bundle's rootfs by this package's own unpacker, once for all the tests.
func unpackedImage(t *testing.T, runsc, rootfs string) (string, ImageConfig) {
	t.Helper()
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "agentbox-image-test-"); shared.err != nil {
			return
		}
		archivePath := os.Getenv(imageEnv)
		if archivePath == "" {
			if archivePath, shared.err = buildTestImage(shared.dir, runsc, rootfs); shared.err != nil {
				return
			}
		}
		a, err := readArchive(archivePath)
		if err != nil {
			shared.err = err
			return
		}
		defer a.f.Close()
		shared.config = a.config
		if a.config.Architecture != runtime.GOARCH {
			shared.err = fmt.Errorf("the image is for %s, this machine is %s", a.config.Architecture, runtime.GOARCH)
			return
		}
		shared.rootfs = filepath.Join(shared.dir, "rootfs")
		start := time.Now()
		if shared.err = os.Mkdir(shared.rootfs, 0o755); shared.err == nil {
			shared.err = a.unpack(shared.rootfs)
		}
		t.Logf("unpacked %s in %s", archivePath, time.Since(start).Round(time.Millisecond))
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.rootfs, shared.config
}

// served is the image's server running in a container.
type served struct {
	base, key string
	logs      *syncBuffer
	volume    string
	client    *http.Client
}

// serveImage runs the unpacked image as `docker run --privileged -v VOLUME:/var/lib/agentbox -e
// AGENTBOX_API_KEY=...` would with the OCI runtime run (runsc or runc, its arguments before "run"),
// in a network namespace the test makes, and waits for /healthz.
func serveImage(t *testing.T, rootfs string, c ImageConfig, tweak func(spec map[string]any), runtimeArgs ...string) *served {
	t.Helper()
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	if err := os.Mkdir(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	ns := newTestNetns(t)
	s := &served{base: "http://" + ns.guest + ":8080", key: randomHex(t, 16), logs: &syncBuffer{}, volume: filepath.Join(dir, "volume"),
		client: &http.Client{Timeout: 2 * time.Minute}}
	if err := os.Mkdir(s.volume, 0o755); err != nil {
		t.Fatal(err)
	}
	spec := runtimeSpec(c, rootfs, ns.path, s.volume, "AGENTBOX_API_KEY="+s.key)
	if tweak != nil {
		tweak(spec)
	}
	b, err := json.MarshalIndent(spec, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "runtime-root")
	id := "agentbox-image-test-" + randomHex(t, 4)
	rt := append([]string{"--root", state}, runtimeArgs[1:]...)
	cmd := exec.Command(runtimeArgs[0], append(rt, "run", "--bundle", bundle, id)...)
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		exec.Command(runtimeArgs[0], "--root", state, "kill", id, "KILL").Run()
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			t.Errorf("%s did not exit after kill", runtimeArgs[0])
		}
		exec.Command(runtimeArgs[0], "--root", state, "delete", "-force", id).Run()
		// runsc pins a network namespace in its root, which would keep the directory from going.
		syscall.Unmount(filepath.Join(state, "null-netns"), syscall.MNT_DETACH)
		if t.Failed() {
			t.Logf("server log:\n%s", s.logs.String())
		}
	})
	waitHealthy(t, s.client, s.base, exited, s.logs)
	return s
}

type response struct {
	status int
	body   map[string]any
}

func (s *served) call(t *testing.T, method, path, auth string, body any) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s %s: %d %q", method, path, resp.StatusCode, raw)
	}
	return response{resp.StatusCode, m}
}

func (r response) errMessage() string {
	e, _ := r.body["error"].(map[string]any)
	msg, _ := e["message"].(string)
	return msg
}

// TestImageServesUnderRunsc runs the image with runsc as the container runtime and talks to the
// server from the host as a client of the published port would: it answers /healthz, refuses a
// request without the key, runs print(1) and an import on nano, and refuses the heavy tier with the
// exact error that says runsc does not nest in gVisor.
func TestImageServesUnderRunsc(t *testing.T) {
	runsc, heavyRootfs := needIntegration(t)
	rootfs, c := unpackedImage(t, runsc, heavyRootfs)
	s := serveImage(t, rootfs, c, nil, runsc, "--network=sandbox", "--platform=systrap")
	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"healthz answers, heavy off", func(t *testing.T) {
			r := s.call(t, "GET", "/healthz", "", nil)
			if r.status != 200 || r.body["status"] != "ok" || r.body["heavy"] != false {
				t.Fatalf("healthz: %d %v", r.status, r.body)
			}
		}},
		{"a run without the key is refused", func(t *testing.T) {
			r := s.call(t, "POST", "/v1/run", "", map[string]any{"code": "print(1)"})
			if r.status != 401 {
				t.Fatalf("without a key: %d %v", r.status, r.body)
			}
		}},
		{"print(1) runs on nano", func(t *testing.T) {
			r := s.call(t, "POST", "/v1/run", s.key, map[string]any{"code": "print(1)", "tier": "nano"})
			if r.status != 200 || r.body["stdout"] != "1\n" || r.body["tier"] != "nano" {
				t.Fatalf("print(1): %d %v", r.status, r.body)
			}
		}},
		{"an import runs on nano", func(t *testing.T) {
			r := s.call(t, "POST", "/v1/run", s.key, map[string]any{"code": "import json; print(json.dumps([1, 2]))", "tier": "nano"})
			if r.status != 200 || r.body["stdout"] != "[1, 2]\n" {
				t.Fatalf("import json: %d %v", r.status, r.body)
			}
		}},
		{"heavy is refused with the reason: runsc does not nest", func(t *testing.T) {
			r := s.call(t, "POST", "/v1/run", s.key, map[string]any{"code": "import numpy", "tier": "heavy"})
			want := `tier "heavy" is not available on this server: ` + heavy.ErrNested.Error()
			if r.status != 400 || r.errMessage() != want {
				t.Fatalf("heavy: %d %q\nwant 400 %q", r.status, r.errMessage(), want)
			}
		}},
		{"the server's log says why heavy is off", func(t *testing.T) {
			if !strings.Contains(s.logs.String(), `msg="heavy tier off"`) || !strings.Contains(s.logs.String(), "runs inside a gVisor sandbox") {
				t.Fatalf("log:\n%s", s.logs.String())
			}
		}},
		{"state lands in the volume", func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(s.volume, "state", "audit")); err != nil {
				t.Fatalf("no audit directory in the volume: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.check)
	}
}

// TestImageRunsHeavyUnderRunc runs the image with runc as `docker run --privileged` does (every
// capability the host has, no seccomp or AppArmor, /sys and the cgroup hierarchy writable, the
// engine's open-files limit): there runsc starts inside the container, and the heavy tier runs
// numpy and pandas.
func TestImageRunsHeavyUnderRunc(t *testing.T) {
	runsc, heavyRootfs := needIntegration(t)
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatalf("%s=1: the heavy tier in the image is tested under runc (Debian's runc package): %v", integrationEnv, err)
	}
	rootfs, c := unpackedImage(t, runsc, heavyRootfs)
	s := serveImage(t, rootfs, c, privileged(t), runc)
	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"healthz says heavy", func(t *testing.T) {
			r := s.call(t, "GET", "/healthz", "", nil)
			if r.status != 200 || r.body["heavy"] != true {
				t.Fatalf("healthz: %d %v", r.status, r.body)
			}
		}},
		{"numpy and pandas run on heavy", func(t *testing.T) {
			r := s.call(t, "POST", "/v1/run", s.key, map[string]any{"code": "import numpy, pandas\nprint(int(numpy.arange(4).sum()), len(pandas.DataFrame({'a': [1, 2]})))", "tier": "heavy"})
			if r.status != 200 || r.body["stdout"] != "6 2\n" || r.body["tier"] != "heavy" {
				t.Fatalf("heavy: %d %v", r.status, r.body)
			}
		}},
		{"print(1) runs on nano beside it", func(t *testing.T) {
			r := s.call(t, "POST", "/v1/run", s.key, map[string]any{"code": "print(1)", "tier": "nano"})
			if r.status != 200 || r.body["stdout"] != "1\n" {
				t.Fatalf("print(1): %d %v", r.status, r.body)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.check)
	}
}

// privileged turns the spec into what `docker run --privileged` gives a container under runc.
func privileged(t *testing.T) func(spec map[string]any) {
	t.Helper()
	caps := boundingCaps(t)
	var nofile syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile); err != nil {
		t.Fatal(err)
	}
	return func(spec map[string]any) {
		proc := spec["process"].(map[string]any)
		proc["capabilities"] = map[string]any{"bounding": caps, "effective": caps, "inheritable": caps, "permitted": caps}
		// runc's own default is 1024 open files, too few for runsc's gofer serving numpy and
		// pandas (their imports then fail); Docker gives containers its daemon's limit.
		proc["rlimits"] = []map[string]any{{"type": "RLIMIT_NOFILE", "hard": nofile.Max, "soft": nofile.Max}}
		var mounts []map[string]any
		for _, m := range spec["mounts"].([]map[string]any) {
			if m["destination"] != "/sys" {
				mounts = append(mounts, m)
			}
		}
		spec["mounts"] = append(mounts,
			map[string]any{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": []string{"nosuid", "noexec", "nodev", "rw"}},
			map[string]any{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": []string{"nosuid", "noexec", "nodev", "relatime", "rw"}})
	}
}

// capNames are the capabilities by bit number (linux/capability.h).
var capNames = []string{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
	"LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE",
	"SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
	"SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
	"WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"}

// boundingCaps are the capabilities this process may give a child: all of them is what
// --privileged means, and runc refuses one outside the bounding set.
func boundingCaps(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:\t"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			var caps []string
			for i, n := range capNames {
				if mask&(1<<i) != 0 {
					caps = append(caps, "CAP_"+n)
				}
			}
			return caps
		}
	}
	t.Fatal("no CapBnd in /proc/self/status")
	return nil
}

// buildTestImage builds the agentbox binary of this checkout (static, as release.sh does) and the
// image from it and build/heavy's cache.
func buildTestImage(dir, runsc, rootfs string) (string, error) {
	bin := filepath.Join(dir, "agentbox")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/entersandbox/agentbox/cmd/agentbox")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building agentbox: %w\n%s", err, out)
	}
	out := filepath.Join(dir, "image.tar")
	_, err := build(options{agentbox: bin, runsc: runsc, rootfs: rootfs, version: "0.0.0-test", revision: "test",
		created: "2026-12-01T00:00:00Z", arch: runtime.GOARCH, out: out, layerCache: filepath.Join(heavyCache(), "image-layers")})
	return out, err
}

// runtimeSpec is the OCI runtime spec a container engine would make from the image's config for
// `docker run -v VOLUME:/var/lib/agentbox -e env...` in the network namespace netns, with root
// (the unpacked image) as the container's root; privileged adds what --privileged does.
func runtimeSpec(c ImageConfig, rootfs, netns, volume string, env ...string) map[string]any {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
		"CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_SYS_CHROOT",
		"CAP_SYS_PTRACE", "CAP_SYS_ADMIN", "CAP_SYS_NICE", "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP", "CAP_SYSLOG"}
	args := append(append([]string{}, c.Config.Entrypoint...), c.Config.Cmd...)
	var volumes []map[string]any
	for v := range c.Config.Volumes {
		volumes = append(volumes, map[string]any{"destination": v, "type": "bind", "source": volume, "options": []string{"rbind", "rw"}})
	}
	mounts := []map[string]any{
		{"destination": "/proc", "type": "proc", "source": "proc"},
		{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
		{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": []string{"nosuid", "noexec", "nodev"}},
		{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
	}
	return map[string]any{
		"ociVersion": "1.0.0",
		"process": map[string]any{
			"user":         map[string]any{"uid": 0, "gid": 0},
			"args":         args,
			"env":          append(append([]string{}, c.Config.Env...), env...),
			"cwd":          cmp.Or(c.Config.WorkingDir, "/"),
			"capabilities": map[string]any{"bounding": caps, "effective": caps, "inheritable": caps, "permitted": caps},
			"rlimits":      []map[string]any{{"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536}},
		},
		"root":     map[string]any{"path": rootfs, "readonly": false},
		"hostname": "agentbox",
		"mounts":   append(mounts, volumes...),
		"linux": map[string]any{"namespaces": []map[string]any{
			{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network", "path": netns},
		}},
	}
}

// testNetns is a network namespace with one veth to the host: the container's address is guest.
type testNetns struct {
	name, path, guest string
}

func newTestNetns(t *testing.T) *testNetns {
	t.Helper()
	// A /30 in a range the heavy tier's namespaces (10.200.0.0/16) and the other tests do not use.
	b := randomBytes(t, 1)
	third := int(b[0]) % 250
	name := "abimg" + randomHex(t, 3)
	host, guest := "10.249."+strconv.Itoa(third)+".1", "10.249."+strconv.Itoa(third)+".2"
	n := &testNetns{name: name, path: "/var/run/netns/" + name, guest: guest}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", name+"h").Run()
		exec.Command("ip", "netns", "del", name).Run()
	})
	ip("netns", "add", name)
	ip("link", "add", name+"h", "type", "veth", "peer", "name", "eth0", "netns", name)
	ip("addr", "add", host+"/30", "dev", name+"h")
	ip("link", "set", name+"h", "up")
	ip("-n", name, "addr", "add", guest+"/30", "dev", "eth0")
	ip("-n", name, "link", "set", "eth0", "up")
	ip("-n", name, "link", "set", "lo", "up")
	ip("-n", name, "route", "add", "default", "via", host)
	return n
}

func waitHealthy(t *testing.T, client *http.Client, base string, exited <-chan error, logs *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/healthz", nil)
		c := *client
		c.Timeout = 2 * time.Second
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("the container exited (%v) before the server answered:\n%s", err, logs.String())
		case <-ctx.Done():
			t.Fatalf("the server did not answer /healthz within 3 minutes (last: %v):\n%s", err, logs.String())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func randomHex(t *testing.T, n int) string { return hex.EncodeToString(randomBytes(t, n)) }

// syncBuffer collects the container's output, written by runsc's copying goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
