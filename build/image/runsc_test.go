package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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

// TestImageServesUnderRunsc unpacks the image into an OCI bundle with this package's own unpacker,
// runs it with `runsc run` (the image's Entrypoint and Cmd, its Env, its volume bound to a
// directory, a network namespace the test makes) and talks to the server from the host as a client
// of the published port would: it answers /healthz, refuses a request without the key, runs
// print(1) on nano, and refuses the heavy tier with the exact error that says runsc does not nest.
func TestImageServesUnderRunsc(t *testing.T) {
	runsc, rootfs := needIntegration(t)
	dir := t.TempDir()
	archivePath := os.Getenv(imageEnv)
	if archivePath == "" {
		archivePath = buildTestImage(t, dir, runsc, rootfs)
	}
	a := openArchive(t, archivePath)
	if a.config.Architecture != runtime.GOARCH {
		t.Fatalf("the image is for %s, this machine is %s", a.config.Architecture, runtime.GOARCH)
	}
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := a.unpack(filepath.Join(bundle, "rootfs")); err != nil {
		t.Fatal(err)
	}
	t.Logf("unpacked in %s", time.Since(start).Round(time.Millisecond))

	ns := newTestNetns(t)
	key := randomHex(t, 16)
	volume := filepath.Join(dir, "volume") // what `docker run -v` would give /var/lib/agentbox
	if err := os.MkdirAll(volume, 0o755); err != nil {
		t.Fatal(err)
	}
	spec := runtimeSpec(a.config, ns.path, volume, "AGENTBOX_API_KEY="+key)
	b, err := json.MarshalIndent(spec, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}

	state := filepath.Join(dir, "runsc-root")
	id := "agentbox-image-test-" + randomHex(t, 4)
	logs := &syncBuffer{}
	cmd := exec.Command(runsc, "--root", state, "--network=sandbox", "--platform=systrap", "run", "--bundle", bundle, id)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		exec.Command(runsc, "--root", state, "kill", id, "KILL").Run()
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			t.Errorf("runsc did not exit after kill")
		}
		exec.Command(runsc, "--root", state, "delete", "-force", id).Run()
		// runsc pins a network namespace in its root, which would keep the directory from going.
		syscall.Unmount(filepath.Join(state, "null-netns"), syscall.MNT_DETACH)
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})

	base := "http://" + ns.guest + ":8080"
	client := &http.Client{Timeout: 60 * time.Second}
	waitHealthy(t, client, base, exited, logs)

	type response struct {
		status int
		body   map[string]any
	}
	call := func(t *testing.T, method, path, auth string, body any) response {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequest(method, base+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := client.Do(req)
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
	errMessage := func(r response) string {
		e, _ := r.body["error"].(map[string]any)
		msg, _ := e["message"].(string)
		return msg
	}

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"healthz answers, heavy off", func(t *testing.T) {
			r := call(t, "GET", "/healthz", "", nil)
			if r.status != 200 || r.body["status"] != "ok" || r.body["heavy"] != false {
				t.Fatalf("healthz: %d %v", r.status, r.body)
			}
		}},
		{"a run without the key is refused", func(t *testing.T) {
			r := call(t, "POST", "/v1/run", "", map[string]any{"code": "print(1)"})
			if r.status != 401 {
				t.Fatalf("without a key: %d %v", r.status, r.body)
			}
		}},
		{"print(1) runs on nano", func(t *testing.T) {
			r := call(t, "POST", "/v1/run", key, map[string]any{"code": "print(1)", "tier": "nano"})
			if r.status != 200 || r.body["stdout"] != "1\n" || r.body["tier"] != "nano" {
				t.Fatalf("print(1): %d %v", r.status, r.body)
			}
		}},
		{"an import runs on nano", func(t *testing.T) {
			r := call(t, "POST", "/v1/run", key, map[string]any{"code": "import json; print(json.dumps([1, 2]))", "tier": "nano"})
			if r.status != 200 || r.body["stdout"] != "[1, 2]\n" {
				t.Fatalf("import json: %d %v", r.status, r.body)
			}
		}},
		{"heavy is refused with the reason: runsc does not nest", func(t *testing.T) {
			r := call(t, "POST", "/v1/run", key, map[string]any{"code": "import numpy", "tier": "heavy"})
			want := `tier "heavy" is not available on this server: ` + heavy.ErrNested.Error()
			if r.status != 400 || errMessage(r) != want {
				t.Fatalf("heavy: %d %q\nwant 400 %q", r.status, errMessage(r), want)
			}
		}},
		{"the server's log says why heavy is off", func(t *testing.T) {
			if !strings.Contains(logs.String(), `msg="heavy tier off"`) || !strings.Contains(logs.String(), "runs inside a gVisor sandbox") {
				t.Fatalf("log:\n%s", logs.String())
			}
		}},
		{"state lands in the volume", func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(volume, "state", "audit")); err != nil {
				t.Fatalf("no audit directory in the volume: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.check)
	}
}

// buildTestImage builds the agentbox binary of this checkout (static, as release.sh does) and the
// image from it and build/heavy's cache.
func buildTestImage(t *testing.T, dir, runsc, rootfs string) string {
	t.Helper()
	bin := filepath.Join(dir, "agentbox")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/entersandbox/agentbox/cmd/agentbox")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building agentbox: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "image.tar")
	start := time.Now()
	res, err := build(options{agentbox: bin, runsc: runsc, rootfs: rootfs, version: "0.0.0-test", revision: "test",
		created: "2026-12-01T00:00:00Z", arch: runtime.GOARCH, out: out})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s (%.1f MB) in %s", res.digest, float64(res.size)/1e6, time.Since(start).Round(time.Millisecond))
	return out
}

// runtimeSpec is the OCI runtime spec a container engine would make from the image's config for
// `docker run --privileged -v VOLUME:/var/lib/agentbox -e env...` in the network namespace netns.
func runtimeSpec(c ImageConfig, netns, volume string, env ...string) map[string]any {
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
		"CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_SYS_CHROOT",
		"CAP_SYS_PTRACE", "CAP_SYS_ADMIN", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP", "CAP_SYSLOG"}
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
		"root":     map[string]any{"path": "rootfs", "readonly": false},
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
