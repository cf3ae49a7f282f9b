package heavy

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/internal/errdefs"
)

// fakeInstall makes what New checks for, with runsc a script that logs its arguments to log and,
// for `list`, prints listed.
func fakeInstall(t *testing.T, listed string) (Config, string) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "runsc.log")
	runsc := filepath.Join(dir, "runsc")
	script := "#!/bin/sh\necho \"$@\" >> " + log + "\ncase \"$*\" in *' list '*) echo '" + listed + "';; esac\nexit 0\n"
	if err := os.WriteFile(runsc, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(rootfs, "usr", "bin"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "usr", "bin", "python3"), nil, 0o755)
	return Config{Runsc: runsc, Rootfs: rootfs, PoolSize: -1, PackageCache: filepath.Join(dir, "packages")}, log
}

// TestSecondEngineOnStateDirRefused: two engines on one state root would sweep and delete each
// other's sandboxes; the second is refused with ErrStateInUse (naming the owner's pid), and the root
// is free again once the first has closed.
func TestSecondEngineOnStateDirRefused(t *testing.T) {
	cfg, _ := fakeInstall(t, "")
	cfg.StateDir = t.TempDir()
	first, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(context.Background(), cfg)
	if !errors.Is(err, ErrStateInUse) || errdefs.ClassOf(err) != errdefs.Conflict || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second engine on one state root: %v, want ErrStateInUse naming pid %d", err, os.Getpid())
	}
	if err := first.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	third, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("after the first engine closed: %v", err)
	}
	third.Close(context.Background())
}

// TestSweepRemovesLeftovers: an engine starting on a crashed engine's state root kills and deletes
// its runsc containers (those with bundles and those runsc lists), SIGKILLs runsc processes still
// running with that root, removes the containers' cgroups and every file but the lock and the
// audit log's directory (KeepDir).
func TestSweepRemovesLeftovers(t *testing.T) {
	cfg, log := fakeInstall(t, "agentbox-listed")
	root := t.TempDir()
	cfg.StateDir = root
	for _, p := range []string{"bundles/agentbox-bundled/config.json", "golden/image", "golden-3/image", "runsc/agentbox-listed_sandbox.state", "agent/agent.py", "stray.tmp", KeepDir + "/audit.db"} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o700)
		os.WriteFile(filepath.Join(root, p), []byte("x"), 0o600)
	}
	old := cgroupRoot
	cgroupRoot = t.TempDir()
	t.Cleanup(func() { cgroupRoot = old })
	cgroups := []string{"cpu/agentbox-bundled", "memory/agentbox-bundled", "pids/agentbox-listed", "agentbox-listed", "cpu/agentbox-someone-elses"}
	for _, c := range cgroups {
		os.MkdirAll(filepath.Join(cgroupRoot, c), 0o755)
	}
	// A sandbox process of the crashed engine, as runsc starts it: argv[0] runsc-sandbox, --root=.
	// The shell waits in its builtin read on a pipe we never write: no child process to leak.
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	stdin, hold, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	defer stdin.Close()
	proc := &exec.Cmd{Path: sh, Args: []string{"runsc-sandbox", "-c", "read x", "sh", "--root=" + filepath.Join(root, "runsc")}, Stdin: stdin}
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- proc.Wait() }()
	t.Cleanup(func() { proc.Process.Kill() })

	e, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Error("the crashed engine's runsc process is still running")
	}
	b, _ := os.ReadFile(log)
	for _, want := range []string{"kill --all agentbox-bundled KILL", "delete --force agentbox-bundled", "kill --all agentbox-listed KILL", "delete --force agentbox-listed"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("runsc was not asked to %q; it was asked:\n%s", want, b)
		}
	}
	for _, c := range cgroups[:4] {
		if _, err := os.Stat(filepath.Join(cgroupRoot, c)); err == nil {
			t.Errorf("cgroup %s is left", c)
		}
	}
	if _, err := os.Stat(filepath.Join(cgroupRoot, cgroups[4])); err != nil {
		t.Errorf("another root's cgroup was removed: %v", err)
	}
	for _, p := range []string{"bundles", "golden", "golden-3", "runsc", "stray.tmp"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s is left in the state root", p)
		}
	}
	if _, err := os.Stat(filepath.Join(root, KeepDir, "audit.db")); err != nil {
		t.Errorf("the sweep removed the audit log: %v", err)
	}
}

// TestFailedStartLeavesNothing: a sandbox that fails to start (runsc missing, runsc exiting before
// the agent is ready, the caller giving up) leaves no bundle and is not tracked any more.
func TestFailedStartLeavesNothing(t *testing.T) {
	cases := []struct {
		name   string
		script string // the fake runsc; empty: none at all
		cancel bool
	}{
		{"runsc missing", "", false},
		{"runsc exits", "#!/bin/sh\necho broken >&2\nexit 1\n", false},
		{"caller gives up", "#!/bin/sh\ncase \"$*\" in *' run '*) exec sleep 30;; esac\nexit 0\n", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := fakeEngine(t)
			e.live = map[*sandbox]struct{}{}
			if tc.script != "" {
				os.WriteFile(e.cfg.Runsc, []byte(tc.script), 0o755)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				time.AfterFunc(200*time.Millisecond, cancel)
			}
			if _, err := e.start(ctx, 256, false, false); err == nil {
				t.Fatal("start succeeded")
			}
			bundles, _ := os.ReadDir(filepath.Join(e.cfg.StateDir, "bundles"))
			if len(bundles) != 0 {
				t.Errorf("bundles left: %v", bundles)
			}
			e.mu.Lock()
			defer e.mu.Unlock()
			if len(e.live) != 0 {
				t.Errorf("%d sandboxes still tracked", len(e.live))
			}
		})
	}
}
