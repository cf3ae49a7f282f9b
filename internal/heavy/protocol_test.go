package heavy

import (
	"context"
	"errors"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// These tests put a shell script where runsc's agent would be: they check what the host does with
// whatever comes down the protocol pipe, without runsc. runsc itself is missing here, so every kill
// goes through the fallback (SIGKILL of the "runsc" process).

func fakeEngine(t *testing.T) *Engine {
	t.Helper()
	oldGrace := killGrace
	killGrace = 200 * time.Millisecond
	t.Cleanup(func() { killGrace = oldGrace })
	dir := t.TempDir()
	e := &Engine{cfg: Config{Runsc: filepath.Join(dir, "no-runsc"), StateDir: dir, Pids: 64, MaxConcurrent: 1},
		log: slog.New(slog.DiscardHandler), stop: make(chan struct{}), slots: make(chan struct{}, 1)}
	return e
}

// fakeSandbox starts script as the agent: it says ready, then the script reads the header and body
// of each request with `read h; read b`.
func fakeSandbox(t *testing.T, e *Engine, script string) *sandbox {
	t.Helper()
	s := &sandbox{id: "fake", done: make(chan struct{}), bundle: t.TempDir()}
	s.cmd = exec.Command("sh", "-c", `echo '{"event":"ready"}'; `+script)
	s, err := e.attach(context.Background(), s, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.destroy(s) })
	return s
}

var fakeLimits = api.Limits{TimeoutMS: 20_000, MemoryLimitMB: 256, MaxOutputBytes: 1 << 20}

// TestGuestGarbageLineIsCapped (issue 9, finding 13): a 4 MiB garbage line is the guest's error in the
// result, with at most a few hundred bytes of it quoted; not a 21 MB internal error.
func TestGuestGarbageLineIsCapped(t *testing.T) {
	cases := []struct{ name, script string }{
		{"unreadable", `read h; read b; head -c 4194304 /dev/zero | tr '\0' 'x'; echo`},
		{"longer than the cap", `read h; read b; printf '{"id":1,"event":"stdout","text":"'; head -c 30000000 /dev/zero | tr '\0' 'x'; echo '"}'`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := fakeEngine(t)
			s := fakeSandbox(t, e, tc.script)
			res, err := e.exec(context.Background(), s, "print(1)", "main.py", true, false, fakeLimits, tier.Stream{})
			if err != nil {
				t.Fatalf("a guest's garbage became an engine error: %.300v", err)
			}
			if res.Error == nil || res.Error.Type != api.ErrGuestCrash || !strings.Contains(res.Error.Message, "protocol") {
				t.Fatalf("result %+.300v, want a GuestCrash naming the protocol", res.Error)
			}
			if n := len(res.Error.Message); n > 600 {
				t.Fatalf("the error quotes %d bytes of the guest's line", n)
			}
			if !s.killed.Load() {
				t.Fatal("the sandbox that broke the protocol was not stopped")
			}
		})
	}
}

// TestUnendedLineDoesNotWedge (issue 9, finding 3): 300 MiB without a newline used to be read into
// host memory up to 256 MiB and then wedge the run for good. Now the line stops at the call's cap, the
// sandbox is killed (here through the fallback: runsc is missing) and the run answers promptly.
func TestUnendedLineDoesNotWedge(t *testing.T) {
	e := fakeEngine(t)
	s := fakeSandbox(t, e, `read h; read b; head -c 314572800 /dev/zero; sleep 600`)
	start := time.Now()
	res, err := e.exec(context.Background(), s, "print(1)", "main.py", true, false, fakeLimits, tier.Stream{})
	if err != nil || res.Error == nil || res.Error.Type != api.ErrGuestCrash {
		t.Fatalf("%v %+v", err, res)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("the run answered after %v (time limit 20 s)", d)
	}
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the fake sandbox was not killed")
	}
}

// TestReplyIDsAreChecked (issue 9, finding 3): a reply to another request is a protocol fault.
func TestReplyIDsAreChecked(t *testing.T) {
	e := fakeEngine(t)
	s := fakeSandbox(t, e, `read h; read b; echo '{"id":7,"event":"result","exit_code":0}'; sleep 600`)
	res, err := e.exec(context.Background(), s, "print(1)", "main.py", true, false, fakeLimits, tier.Stream{})
	if err != nil || res.Error == nil || res.Error.Type != api.ErrGuestCrash || !strings.Contains(res.Error.Message, "request 7 to request 1") {
		t.Fatalf("%v %+v", err, res)
	}
}

// TestHungAgentIsBoundedByDeadline (issue 9, finding 3): an agent that never answers nor reads, and a
// runsc kill that fails, still end the call at its deadline plus the kill grace.
func TestHungAgentIsBoundedByDeadline(t *testing.T) {
	e := fakeEngine(t)
	s := fakeSandbox(t, e, `exec sleep 600`)
	start := time.Now()
	// A body larger than a pipe's buffer: the write itself blocks.
	_, err := e.call(context.Background(), s, map[string]any{"op": "write", "data": strings.Repeat("x", 1<<20)}, 500*time.Millisecond, smallLine, nil)
	if !errors.Is(err, errTimeout) {
		t.Fatalf("err %v, want the timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the call took %v with a 500 ms deadline", d)
	}
}

// TestAttachNoRace (issue 9, finding 16): the agent's exit status is read only after Wait set it, and
// replies written just before the agent exits are all read (os/exec's StdoutPipe could close them
// under the reader). Run with -race.
func TestAttachNoRace(t *testing.T) {
	t.Run("exits before ready", func(t *testing.T) {
		e := fakeEngine(t)
		s := &sandbox{id: "fake", done: make(chan struct{}), bundle: t.TempDir()}
		s.cmd = exec.Command("sh", "-c", "echo boom >&2; exit 3")
		_, err := e.attach(context.Background(), s, true)
		if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "boom") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("last lines kept", func(t *testing.T) {
		for range 20 {
			e := fakeEngine(t)
			s := fakeSandbox(t, e, `read h; read b; i=0; while [ $i -lt 200 ]; do printf '%s\n' '{"id":1,"event":"stdout","text":"line\n"}'; i=$((i+1)); done; echo '{"id":1,"event":"result","exit_code":0}'; exit 0`)
			var mu sync.Mutex
			var got strings.Builder
			res, err := e.exec(context.Background(), s, "", "main.py", true, false, fakeLimits, tier.Stream{Stdout: func(t string) { mu.Lock(); got.WriteString(t); mu.Unlock() }})
			if err != nil || res.Error != nil || res.Stdout != strings.Repeat("line\n", 200) {
				t.Fatalf("%v %+v: %d bytes of stdout", err, res.Error, len(res.Stdout))
			}
		}
	})
}

// TestAdmissionQueueIsBounded (issue 9, finding 4): with every slot taken, one request may wait (the
// queue), the next is refused at once as overloaded, and the waiter is refused after QueueWait.
func TestAdmissionQueueIsBounded(t *testing.T) {
	e := fakeEngine(t)
	e.cfg.MaxQueue, e.cfg.QueueWait = 1, 300*time.Millisecond
	release, err := e.admit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		r, err := e.admit(context.Background())
		if err == nil {
			r()
		}
		waited <- err
	}()
	for e.queued.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if _, err := e.admit(context.Background()); errdefs.ClassOf(err) != errdefs.Overloaded || !errors.Is(err, ErrBusy) {
		t.Fatalf("beyond the queue: %v, want overloaded", err)
	}
	if err := <-waited; errdefs.ClassOf(err) != errdefs.Overloaded {
		t.Fatalf("after QueueWait: %v, want overloaded", err)
	}
	release()
	release() // idempotent
	r, err := e.admit(context.Background())
	if err != nil {
		t.Fatalf("a freed slot: %v", err)
	}
	r()
}
