package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/tier"
)

// The regression tests of issue 9's heavy-tier findings, against the real sandbox.

// TestGuestCannotReachProtocol (finding 3): user code runs in a worker process without the agent's
// protocol pipe: not as a module global, not through /proc/1/fd (the agent is not dumpable). What it
// can write to is its own result channel, and 270 MiB without a newline there ends the run promptly
// as the guest's crash, not a wedged request.
func TestGuestCannotReachProtocol(t *testing.T) {
	ctx := context.Background()
	s, err := eng.NewSession(ctx, api.Limits{TimeoutMS: 60_000}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	probe := `import ctypes, os, sys
agent = sys.modules['__main__']
print(getattr(agent, 'PROTO', None), agent.PROTO_IN, agent.PROTO_OUT, os.getpid() != 1)
for fd in os.listdir('/proc/1/fd'):
    for how in ('open', 'readlink'):
        try:
            os.close(os.open('/proc/1/fd/' + fd, os.O_WRONLY | os.O_NONBLOCK)) if how == 'open' else os.readlink('/proc/1/fd/' + fd)
            print(fd, how, 'reachable')
        except PermissionError:
            pass
        except FileNotFoundError:
            pass  # the agent closed it after the listing: nothing to reach
libc = ctypes.CDLL(None, use_errno=True)
print('ptrace', libc.ptrace(16, 1, 0, 0), ctypes.get_errno())  # PTRACE_ATTACH: EPERM
`
	r, err := s.Run(ctx, probe, tier.Stream{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Stdout != "None None None True\nptrace -1 1\n" {
		t.Fatalf("the worker reaches the agent: %q %s", r.Stdout, r.Stderr)
	}
	flood := `import os
chunk = b'x' * (1 << 20)
for fd in sorted(int(n) for n in os.listdir('/proc/self/fd')):
    if fd > 2:
        try:
            for _ in range(270):
                os.write(fd, chunk)
        except OSError:
            pass
`
	start := time.Now()
	r, err = s.Run(ctx, flood, tier.Stream{})
	if err != nil {
		t.Fatalf("a flood of the worker's channel became an engine error: %.300v", err)
	}
	if r.Error == nil || r.Error.Type != api.ErrGuestCrash || len(r.Error.Message) > 600 {
		t.Fatalf("flood result %+.300v, want a short GuestCrash", r.Error)
	}
	if d := time.Since(start); d > 45*time.Second {
		t.Fatalf("the flooded run answered after %v", d)
	}
	if _, err := s.Run(ctx, "print(1)", tier.Stream{}); !errors.Is(err, tier.ErrGone) {
		t.Fatalf("the crashed session still runs: %v", err)
	}
	if next := run(t, api.RunRequest{Code: "print('still serving')"}); next.Stdout != "still serving\n" {
		t.Fatalf("engine after the flood: %+v", next)
	}
}

// TestPooledRunsGetFreshRandomState (finding 9): sandboxes restored from one golden checkpoint used
// to share their random state.
func TestPooledRunsGetFreshRandomState(t *testing.T) {
	code := "import random, numpy\nprint(random.random(), numpy.random.rand(), numpy.random.default_rng().random())"
	seen := map[string]int{}
	before := eng.Stats.PoolHits.Load()
	for i := range 3 {
		for eng.PoolReady() == 0 {
			time.Sleep(20 * time.Millisecond)
		}
		r := run(t, api.RunRequest{Code: code})
		f := strings.Fields(r.Stdout)
		if len(f) != 3 {
			t.Fatalf("run %d: %q %s", i, r.Stdout, r.Stderr)
		}
		for j, v := range f {
			seen[[]string{"random", "numpy legacy", "default_rng"}[j]+" "+v]++
		}
	}
	if hits := eng.Stats.PoolHits.Load() - before; hits != 3 {
		t.Fatalf("%d of 3 runs came from the pool", hits)
	}
	for k, n := range seen {
		if n > 1 {
			t.Fatalf("%s came out of %d pooled runs", k, n)
		}
	}
}

// TestReadFileIsCapped (finding 12): a read larger than its cap is refused as too large before the
// file is read, and the session survives; a large file within the cap comes back whole, in chunks.
func TestReadFileIsCapped(t *testing.T) {
	ctx := context.Background()
	s, err := eng.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if r, err := s.Run(ctx, "open('/tmp/big', 'wb').write(bytes(range(256)) * (40 << 12))", tier.Stream{}); err != nil || r.Error != nil {
		t.Fatalf("%v %+v", err, r)
	}
	const size = 40 << 20
	if _, err := s.ReadFile(ctx, "/tmp/big", size-1); errdefs.ClassOf(err) != errdefs.TooLarge || !strings.Contains(err.Error(), "41943040 bytes") {
		t.Fatalf("over the cap: %v, want too large with the size", err)
	}
	data, err := s.ReadFile(ctx, "/tmp/big", size)
	if err != nil || !bytes.Equal(data, bytes.Repeat([]byte(func() string {
		b := make([]byte, 256)
		for i := range b {
			b[i] = byte(i)
		}
		return string(b)
	}()), 40<<12)) {
		t.Fatalf("at the cap: %d bytes, %v", len(data), err)
	}
	if _, err := s.ReadFile(ctx, "/dev/zero", 1<<20); errdefs.ClassOf(err) != errdefs.InvalidArgument {
		t.Fatalf("a device: %v, want invalid argument", err)
	}
	if r, err := s.Run(ctx, "os = __import__('os'); os.mkfifo('/tmp/fifo'); print('ok')", tier.Stream{}); err != nil || r.Stdout != "ok\n" {
		t.Fatalf("%v %+v", err, r)
	}
	if _, err := s.ReadFile(ctx, "/tmp/fifo", 1<<20); errdefs.ClassOf(err) != errdefs.InvalidArgument {
		t.Fatalf("a FIFO: %v, want invalid argument (not a hang)", err)
	}
	if data, err := s.ReadFile(ctx, "/output/none", 0); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("missing: %q %v", data, err)
	}
	if r, err := s.Run(ctx, "open('/tmp/empty', 'w').close(); print('alive')", tier.Stream{}); err != nil || r.Stdout != "alive\n" {
		t.Fatalf("the session after the refusals: %v %+v", err, r)
	}
	if data, err := s.ReadFile(ctx, "/tmp/empty", 0); err != nil || data == nil || len(data) != 0 {
		t.Fatalf("empty file: %#v %v", data, err)
	}
}

// TestNeutralHostFiles (finding 14): the sandbox sees neither the build machine's hostname nor its
// nameserver.
func TestNeutralHostFiles(t *testing.T) {
	host, _ := os.Hostname()
	r := run(t, api.RunRequest{Code: "import socket\nprint(socket.gethostname())\nprint(open('/etc/hostname').read(), end='')\nprint(open('/etc/resolv.conf').read(), end='')"})
	lines := strings.Split(r.Stdout, "\n")
	if len(lines) < 3 || lines[0] != "sandbox" || lines[1] != "sandbox" {
		t.Fatalf("hostname: %q %s", r.Stdout, r.Stderr)
	}
	if strings.Contains(r.Stdout, "nameserver") || host != "sandbox" && strings.Contains(r.Stdout, host) {
		t.Fatalf("the build machine shows through: %q (host %q)", r.Stdout, host)
	}
}

// TestForkBombReportsProcesses (finding 17): a fork bomb exhausts memory before the process limit;
// the result says memory and how many processes were running.
func TestForkBombReportsProcesses(t *testing.T) {
	for eng.PoolReady() == 0 { // a pooled (preloaded, ~40 MB a copy) sandbox, like the report's
		time.Sleep(20 * time.Millisecond)
	}
	r := run(t, api.RunRequest{Code: "import os, numpy, pandas\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n    x = bytearray(16 << 20)", Limits: api.Limits{TimeoutMS: 60_000}})
	if r.Error == nil || r.Error.Type != api.ErrMemoryLimitExceeded || !r.MemoryExceeded {
		t.Fatalf("%+v", r)
	}
	if !strings.Contains(r.Error.Message, "processes running (process limit 64)") {
		t.Fatalf("the message does not say how many processes ran: %q", r.Error.Message)
	}
}

// TestSessionsHoldSlots (finding 4): NewSession takes one of MaxConcurrent slots before it starts a
// sandbox and keeps it until Close; beyond the queue requests are refused as overloaded at once,
// queued ones after QueueWait, and no extra sandbox is started.
func TestSessionsHoldSlots(t *testing.T) {
	ctx := context.Background()
	e, err := heavy.New(ctx, heavy.Config{PoolSize: -1, MaxConcurrent: 2, MaxQueue: 1, QueueWait: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	var wg sync.WaitGroup
	sessions := make([]tier.Session, 6)
	errs := make([]error, 6)
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sessions[i], errs[i] = e.NewSession(ctx, api.Limits{}, nil)
		}()
	}
	wg.Wait()
	ok, busy := 0, 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
			defer sessions[i].Close(ctx)
		case errdefs.ClassOf(err) == errdefs.Overloaded:
			busy++
		default:
			t.Fatalf("session %d: %v", i, err)
		}
	}
	if ok != 2 || busy != 4 || e.Stats.Started.Load() != 2 {
		t.Fatalf("%d sessions, %d refused, %d sandboxes started; want 2, 4, 2", ok, busy, e.Stats.Started.Load())
	}
	if _, err := e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{}); errdefs.ClassOf(err) != errdefs.Overloaded {
		t.Fatalf("a run while the sessions hold every slot: %v", err)
	}
	for _, s := range sessions {
		if s != nil {
			s.Close(ctx)
			break
		}
	}
	if res, err := e.Run(ctx, api.RunRequest{Code: "print(1)"}, tier.Stream{}); err != nil || res.Stdout != "1\n" {
		t.Fatalf("a run after a session closed: %v %+v", err, res)
	}
}

// TestGoldenRotationChangesHashSecret (finding 9): forked workers share the str-hash secret of the
// golden checkpoint they were restored from; the pool makes a new checkpoint every GoldenMaxAge, so
// pooled runs of different periods hash differently.
func TestGoldenRotationChangesHashSecret(t *testing.T) {
	ctx := context.Background()
	e, err := heavy.New(ctx, heavy.Config{PoolSize: 1, GoldenMaxAge: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	hashes := map[string]bool{}
	for range 2 {
		deadline := time.Now().Add(3 * time.Minute)
		for e.PoolReady() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the pool did not fill")
			}
			time.Sleep(50 * time.Millisecond)
		}
		res, err := e.Run(ctx, api.RunRequest{Code: "print(hash('abc'))"}, tier.Stream{})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%v %+v", err, res)
		}
		hashes[res.Stdout] = true
	}
	if e.Stats.PoolHits.Load() != 2 || e.Stats.Restored.Load() < 2 {
		t.Fatalf("%d pool hits, %d restores: not from golden checkpoints", e.Stats.PoolHits.Load(), e.Stats.Restored.Load())
	}
	if len(hashes) != 2 {
		t.Fatalf("two pooled runs across a rotation hashed alike: %v", hashes)
	}
}

// TestWorkerFaultsAreGuestCrashes (finding 3): whatever the worker does to itself or its result
// channel, the supervisor answers for it and the run ends as the guest's crash.
func TestWorkerFaultsAreGuestCrashes(t *testing.T) {
	cases := []struct{ name, code, message string }{
		{"exit", "import os\nos._exit(3)", "exited with status 3"},
		{"closed channel", "import os, sys, time\nos.close(sys.modules['__main__']._res_fd)\ntime.sleep(30)", "closed its end"},
		{"forged garbage", "import os, sys\nos.write(sys.modules['__main__']._res_fd, b'not json\\n')", "unreadable line"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			r := run(t, api.RunRequest{Code: tc.code, Limits: api.Limits{TimeoutMS: 20_000}})
			if r.Error == nil || r.Error.Type != api.ErrGuestCrash || !strings.Contains(r.Error.Message, tc.message) {
				t.Fatalf("%+v", r.Error)
			}
			if d := time.Since(start); d > 15*time.Second {
				t.Fatalf("answered after %v", d)
			}
		})
	}
}
