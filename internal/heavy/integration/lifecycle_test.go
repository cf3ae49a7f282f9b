package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
	"github.com/entersandbox/agentbox/internal/tier"
)

// leftovers counts what sandboxes of the state root leave on the host.
type leftovers struct {
	Procs   int // runsc, runsc-sandbox and runsc-gofer processes with the root's runsc state
	Cgroups int // cgroups of the containers with bundles under the root (ids: the bundles seen so far)
	Mounts  int // mount points under the root
	Files   int // files and directories under the root, but the lock, the agent's own files and the audit log
}

// count counts the leftovers of root; ids accumulates the container ids seen in its bundles.
func count(t *testing.T, root string, ids map[string]bool) leftovers {
	t.Helper()
	var n leftovers
	runscRoot := filepath.Join(root, "runsc")
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "runsc") && filepath.Base(args[0]) != "nice" {
			continue
		}
		for i, a := range args {
			if a == "--root="+runscRoot || a == "--root" && i+1 < len(args) && args[i+1] == runscRoot {
				n.Procs++
				break
			}
		}
	}
	bundles, _ := os.ReadDir(filepath.Join(root, "bundles"))
	for _, b := range bundles {
		ids[b.Name()] = true
	}
	for id := range ids {
		paths, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", id))
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", id)); err == nil {
			paths = append(paths, id)
		}
		n.Cgroups += len(paths)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	sc := bufio.NewScanner(bytes.NewReader(mi))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 4 && (f[4] == root || strings.HasPrefix(f[4], root+"/")) {
			n.Mounts++
		}
	}
	baseline := map[string]bool{"lock": true, "agent": true, "agent/agent.py": true, "agent/outputs.py": true, "etc": true, "etc/hostname": true, "etc/resolv.conf": true}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(root, p)
		if rel == heavy.KeepDir {
			return filepath.SkipDir // the audit log outlives the servers by design
		}
		if err == nil && rel != "." && !baseline[rel] {
			n.Files++
		}
		return nil
	})
	return n
}

// buildAgentbox builds the agentbox binary into a temporary directory.
func buildAgentbox(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "agentbox")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/agentbox")
	cmd.Dir = "../../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// serveProc is a running `agentbox serve`.
type serveProc struct {
	cmd    *exec.Cmd
	base   string
	stderr *lockedWriter
	exited chan struct{} // closed when the process has exited, after err is set
	err    error
}

func startServe(t *testing.T, bin, root string, args ...string) *serveProc {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	p := &serveProc{base: "http://" + addr, stderr: &lockedWriter{w: &bytes.Buffer{}}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{"serve", "--addr", addr, "--state-dir", root, "--heavy", "on"}, args...)...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// health waits until the server answers /healthz with ready(fields), or fails.
func (p *serveProc) health(t *testing.T, ready func(h map[string]any) bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			t.Fatalf("agentbox serve exited: %v\n%s", p.err, p.stderr)
		default:
		}
		resp, err := http.Get(p.base + "/healthz")
		if err == nil {
			var h map[string]any
			json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if ready(h) {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("agentbox serve not ready\n%s", p.stderr)
}

func (p *serveProc) post(path string, body any) (*http.Response, error) {
	b, _ := json.Marshal(body)
	return http.Post(p.base+path, "application/json", bytes.NewReader(b))
}

// TestKill9RestartSweeps: `agentbox serve` killed with SIGKILL while heavy sessions and runs are
// open leaves runsc processes, cgroups, mounts and files under its state root; a new server on the
// same root sweeps all of them before it serves, refuses to share the root with a third, and leaves
// nothing when it shuts down itself.
func TestKill9RestartSweeps(t *testing.T) {
	bin := buildAgentbox(t)
	root := filepath.Join(t.TempDir(), "state")
	ids := map[string]bool{} // every container id seen in the root's bundles
	t.Cleanup(func() {
		// Should a check fail before the sweep, nothing is left on the host either: the killed
		// server's cgroups (empty by now) and its netns mount, so the temporary directory can go.
		count(t, root, ids)
		for id := range ids {
			paths, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", id))
			for _, p := range append(paths, filepath.Join("/sys/fs/cgroup", id)) {
				syscall.Rmdir(p)
			}
		}
		for range 64 {
			if syscall.Unmount(filepath.Join(root, "runsc", "null-netns"), syscall.MNT_DETACH) != nil {
				break
			}
		}
	})
	first := startServe(t, bin, root, "--heavy-pool", "1")
	first.health(t, func(h map[string]any) bool { return h["pool_ready"] != nil && h["pool_ready"].(float64) >= 1 })
	// An idle session, a session busy in a loop and a sleeping one-shot run.
	var sessions []string
	for range 2 {
		resp, err := first.post("/v1/sessions", api.SessionRequest{Tier: api.TierHeavy})
		if err != nil {
			t.Fatal(err)
		}
		var s api.Session
		json.NewDecoder(resp.Body).Decode(&s)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("session: %d", resp.StatusCode)
		}
		sessions = append(sessions, s.ID)
	}
	go first.post("/v1/sessions/"+sessions[1]+"/run", api.SessionRunRequest{Code: "while True: pass"})
	go first.post("/v1/run", api.RunBody{Tier: api.TierHeavy, Code: "import time; time.sleep(600)"})
	time.Sleep(5 * time.Second) // the cell and the run are going
	first.cmd.Process.Signal(syscall.SIGKILL)
	<-first.exited

	before := count(t, root, ids)
	t.Logf("after kill -9: %+v (containers %d)", before, len(ids))
	// runsc processes often die with the server (runsc run has a parent-death signal, and its
	// sandbox follows it), so they are counted but not required.
	if before.Cgroups == 0 || before.Mounts == 0 || before.Files == 0 {
		t.Fatalf("the killed server left too little to test the sweep with: %+v", before)
	}

	second := startServe(t, bin, root, "--heavy-pool", "-1")
	second.health(t, func(h map[string]any) bool { return h["status"] == "ok" })
	after := count(t, root, ids)
	t.Logf("after restart: %+v", after)
	if after != (leftovers{}) {
		t.Errorf("the new server's sweep left %+v of the killed one's (want none)\n%s", after, second.stderr)
	}

	third := startServe(t, bin, root, "--heavy-pool", "-1")
	select {
	case <-third.exited:
		var exit *exec.ExitError
		if !errors.As(third.err, &exit) || !strings.Contains(third.stderr.String(), "in use by another agentbox server") {
			t.Errorf("a second server on the state root: %v\n%s", third.err, third.stderr)
		}
	case <-time.After(time.Minute):
		t.Error("a second server on the same state root was not refused")
	}

	// The new server works, and its own clean shutdown leaves nothing either.
	resp, err := second.post("/v1/run", api.RunBody{Tier: api.TierHeavy, Code: "print(6*7)"})
	if err != nil {
		t.Fatal(err)
	}
	var rr api.RunResponse
	json.NewDecoder(resp.Body).Decode(&rr)
	resp.Body.Close()
	if rr.Stdout != "42\n" {
		t.Errorf("a run on the restarted server: %d %+v", resp.StatusCode, rr)
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-second.exited:
	case <-time.After(2 * time.Minute):
		t.Fatal("the server did not shut down")
	}
	if final := count(t, root, ids); final != (leftovers{}) {
		t.Errorf("after a clean shutdown: %+v", final)
	}
}

// TestShutdownStopsHeavyCellAtGrace: a busy loop in a heavy session cell and in a one-shot run, with
// a 10-minute limit, is stopped when the server's Shutdown grace ends (the request answers 503), the
// heavy engine's Close returns soon after, and no runsc process of the engine is left.
func TestShutdownStopsHeavyCellAtGrace(t *testing.T) {
	const loop = "while True: pass"
	lim := api.Limits{TimeoutMS: 600_000}
	cases := []struct {
		name  string
		start func(t *testing.T, p *serveProc) (*http.Response, error)
	}{
		{"session cell", func(t *testing.T, p *serveProc) (*http.Response, error) {
			resp, err := p.post("/v1/sessions", api.SessionRequest{Tier: api.TierHeavy, Limits: lim})
			if err != nil {
				return nil, err
			}
			var s api.Session
			json.NewDecoder(resp.Body).Decode(&s)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				return nil, fmt.Errorf("session: %d", resp.StatusCode)
			}
			return p.post("/v1/sessions/"+s.ID+"/run", api.SessionRunRequest{Code: loop})
		}},
		{"run", func(t *testing.T, p *serveProc) (*http.Response, error) {
			return p.post("/v1/run", api.RunBody{Tier: api.TierHeavy, Code: loop, Limits: lim})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			h, err := heavy.New(ctx, heavy.Config{PoolSize: -1, StateDir: root})
			if err != nil {
				t.Fatal(err)
			}
			n, err := nano.New(ctx, nano.Config{PoolSize: -1})
			if err != nil {
				t.Fatal(err)
			}
			d := dispatch.New(n, dispatch.Config{Heavy: h})
			srv, err := server.New(d, server.Config{})
			if err != nil {
				t.Fatal(err)
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(l)
			p := &serveProc{base: "http://" + l.Addr().String()}
			answered := make(chan int, 1)
			go func() {
				resp, err := tc.start(t, p)
				if err != nil {
					t.Error(err)
					answered <- 0
					return
				}
				resp.Body.Close()
				answered <- resp.StatusCode
			}()
			// The loop runs once the agent's worker process is up: the sandbox's runsc processes exist
			// and a few seconds have passed.
			time.Sleep(8 * time.Second)
			if c := count(t, root, map[string]bool{}); c.Procs == 0 {
				t.Fatalf("no sandbox running: %+v", c)
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			start := time.Now()
			if err := srv.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Shutdown = %v, want the grace period's deadline", err)
			}
			select {
			case code := <-answered:
				if code != http.StatusServiceUnavailable {
					t.Errorf("the stopped request answered %d, want 503", code)
				}
			case <-time.After(time.Minute):
				t.Fatal("the running heavy request was not stopped by the end of the grace period")
			}
			closed := make(chan error, 1)
			go func() {
				d.Close()
				n.Close(sctx)
				closed <- h.Close(sctx)
			}()
			select {
			case <-closed:
			case <-time.After(time.Minute):
				t.Fatal("closing the heavy engine after the grace period did not return")
			}
			t.Logf("stopped and closed %v after Shutdown began (grace 1s)", time.Since(start).Round(time.Millisecond))
			if c := count(t, root, map[string]bool{}); c.Procs != 0 || c.Mounts != 0 {
				t.Errorf("after Close: %+v", c)
			}
		})
	}
}

// TestCloseKillsLiveSandboxes: Close, called while a one-shot run and a session cell loop (their
// contexts never end) and another session is idle, lets them run until its own deadline, then kills
// every sandbox: the calls fail as errdefs.Unavailable (not as a crash or an OOM kill), and no runsc
// process, mount or file of the engine is left.
func TestCloseKillsLiveSandboxes(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	e, err := heavy.New(ctx, heavy.Config{PoolSize: 1, StateDir: root})
	if err != nil {
		t.Fatal(err)
	}
	lim := api.Limits{TimeoutMS: 600_000}
	idle, err := e.NewSession(ctx, lim, nil)
	if err != nil {
		t.Fatal(err)
	}
	busy, err := e.NewSession(ctx, lim, nil)
	if err != nil {
		t.Fatal(err)
	}
	returned := make(chan error, 2)
	go func() {
		_, err := busy.Run(ctx, "while True: pass", tier.Stream{})
		returned <- err
	}()
	go func() {
		_, err := e.Run(ctx, api.RunRequest{Code: "while True: pass", Limits: lim}, tier.Stream{})
		returned <- err
	}()
	time.Sleep(5 * time.Second)
	ids := map[string]bool{}
	t.Logf("before Close: %+v", count(t, root, ids))
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- e.Close(cctx) }()
	select {
	case err := <-closed:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close = %v, want its deadline (calls were running)", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Close did not return after its deadline")
	}
	for range 2 {
		select {
		case err := <-returned:
			if errdefs.ClassOf(err) != errdefs.Unavailable || !errors.Is(err, heavy.ErrClosed) {
				t.Errorf("a loop Close stopped returned %v, want errdefs.Unavailable and heavy.ErrClosed", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("a running call outlived Close")
		}
	}
	if idle.Alive() {
		t.Error("the idle session is alive after Close")
	}
	idle.Close(ctx)
	busy.Close(ctx)
	if c := count(t, root, ids); c != (leftovers{}) {
		t.Errorf("after Close: %+v", c)
	}
}

// TestDeadPooledSandboxIsReplaced: a pooled sandbox whose runsc died while it waited (SIGKILLed
// here, as the exit of the thread that forked it did through Pdeathsig before runsc was started
// from a pinned thread) is not handed out: the run gets another sandbox and succeeds.
func TestDeadPooledSandboxIsReplaced(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	e, err := heavy.New(ctx, heavy.Config{PoolSize: 1, StateDir: root})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	for deadline := time.Now().Add(3 * time.Minute); e.PoolReady() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the pool did not fill")
		}
	}
	// The engine's own runsc processes (run or restore) are this process's children: the pooled one,
	// and the next one the filler holds until there is room.
	pids := runscChildren(root)
	if len(pids) == 0 {
		t.Fatal("no runsc child of this process for the pooled sandbox")
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			// The state follows the command, which is in parentheses: "pid (comm) S ...".
			if err != nil || strings.HasPrefix(string(b[bytes.LastIndexByte(b, ')')+1:]), " Z") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("runsc %d outlived SIGKILL", pid)
			}
		}
	}
	r, err := e.Run(ctx, api.RunRequest{Code: "print('served')"}, tier.Stream{})
	if err != nil || r.Stdout != "served\n" || r.Error != nil {
		t.Fatalf("run after the pooled sandbox died: %v %+v", err, r)
	}
	if dead := e.Stats.PoolDead.Load(); dead < 1 {
		t.Fatalf("PoolDead = %d: the dead sandbox was not noticed", dead)
	}
}

// runscChildren lists this process's child processes that are runsc with root's runsc state.
func runscChildren(root string) []int {
	runscRoot := filepath.Join(root, "runsc")
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", p.Name(), "stat"))
		cmdline, err2 := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil || err2 != nil {
			continue
		}
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])) // state, ppid, ...
		args := strings.Split(string(cmdline), "\x00")
		if len(fields) < 2 || fields[1] != strconv.Itoa(os.Getpid()) || !strings.HasPrefix(filepath.Base(args[0]), "runsc") {
			continue
		}
		if slices.Contains(args, "--root="+runscRoot) || slices.Index(args, "--root") >= 0 && slices.Index(args, runscRoot) == slices.Index(args, "--root")+1 {
			pids = append(pids, pid)
		}
	}
	return pids
}
