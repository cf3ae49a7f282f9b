package integration

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// commandSession is a heavy session as a tier.Commander, closed at the end of the test.
func commandSession(t *testing.T, lim api.Limits) (tier.Session, tier.Commander) {
	t.Helper()
	ctx := context.Background()
	s, err := eng.NewSession(ctx, lim, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(ctx) })
	c, ok := s.(tier.Commander)
	if !ok {
		t.Fatalf("a heavy session (%T) is not a tier.Commander", s)
	}
	return s, c
}

// TestCommandForeground: foreground commands in a heavy session, each case checking one behaviour of
// issue 18's part 1.
func TestCommandForeground(t *testing.T) {
	ctx := context.Background()
	_, c := commandSession(t, api.Limits{TimeoutMS: 20000, MaxOutputBytes: 4096})
	cases := []struct {
		name  string
		req   api.CommandRequest
		check func(t *testing.T, got *api.Command, streamed string)
	}{
		{"echo", api.CommandRequest{Cmd: "echo", Args: []string{"hello", "world"}}, func(t *testing.T, got *api.Command, streamed string) {
			if got.State != api.CommandExited || got.ExitCode != 0 || got.Stdout != "hello world\n" || streamed != "hello world\n" || got.PID <= 1 {
				t.Fatalf("%+v streamed %q", got, streamed)
			}
		}},
		{"failing command's exit code", api.CommandRequest{Cmd: "exit 3", Shell: true}, func(t *testing.T, got *api.Command, _ string) {
			if got.State != api.CommandExited || got.ExitCode != 3 {
				t.Fatalf("%+v", got)
			}
		}},
		{"stderr", api.CommandRequest{Cmd: "echo out; echo err >&2", Shell: true}, func(t *testing.T, got *api.Command, _ string) {
			if got.Stdout != "out\n" || got.Stderr != "err\n" {
				t.Fatalf("%+v", got)
			}
		}},
		{"cwd", api.CommandRequest{Cmd: "pwd", Cwd: "/tmp"}, func(t *testing.T, got *api.Command, _ string) {
			if got.Stdout != "/tmp\n" {
				t.Fatalf("%+v", got)
			}
		}},
		{"default cwd is /home/user", api.CommandRequest{Cmd: "pwd"}, func(t *testing.T, got *api.Command, _ string) {
			if got.Stdout != "/home/user\n" {
				t.Fatalf("%+v", got)
			}
		}},
		{"env, and no agent or host variables", api.CommandRequest{Cmd: `echo "$GREETING"; env | grep -c -e AGENTBOX_ -e '^USER=root' || true`, Shell: true,
			Env: map[string]string{"GREETING": "hi there"}}, func(t *testing.T, got *api.Command, _ string) {
			if got.Stdout != "hi there\n0\n" {
				t.Fatalf("%+v", got)
			}
		}},
		{"stdin", api.CommandRequest{Cmd: "tr", Args: []string{"a-z", "A-Z"}, Stdin: "shout\n"}, func(t *testing.T, got *api.Command, _ string) {
			if got.Stdout != "SHOUT\n" {
				t.Fatalf("%+v", got)
			}
		}},
		{"stdin is closed without data", api.CommandRequest{Cmd: "cat"}, func(t *testing.T, got *api.Command, _ string) {
			if got.State != api.CommandExited || got.Stdout != "" {
				t.Fatalf("%+v", got)
			}
		}},
		{"timeout kills it", api.CommandRequest{Cmd: "sleep 30 & sleep 30; echo never", Shell: true, TimeoutMS: 500}, func(t *testing.T, got *api.Command, _ string) {
			if got.State != api.CommandTimedOut || got.Signal != "SIGKILL" || got.ExitCode != -1 || got.DurationMS > 10000 {
				t.Fatalf("%+v", got)
			}
		}},
		{"output cap stops it", api.CommandRequest{Cmd: "yes"}, func(t *testing.T, got *api.Command, _ string) {
			if got.State != api.CommandKilled || !got.Truncated || !strings.HasPrefix(got.Stdout, "y\ny\n") || len(got.Stdout) > 4096+len(api.TruncationMarker) {
				t.Fatalf("state %s truncated %v stdout %d bytes", got.State, got.Truncated, len(got.Stdout))
			}
		}},
		{"fork bomb is bounded by the pid limit", api.CommandRequest{Cmd: `b() { b | b; }; b`, Shell: true, TimeoutMS: 3000}, func(t *testing.T, got *api.Command, _ string) {
			if got.State == api.CommandRunning || !strings.Contains(got.Stderr, "fork") {
				t.Fatalf("%+v", got)
			}
		}},
		{"the fork bomb's processes are gone after it", api.CommandRequest{Cmd: "sleep 0.5; ls /proc | grep -c '^[0-9]'", Shell: true}, func(t *testing.T, got *api.Command, _ string) {
			if n, err := strconv.Atoi(strings.TrimSpace(got.Stdout)); err != nil || n > 8 {
				t.Fatalf("%+v", got)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var streamed strings.Builder
			got, err := c.Command(ctx, tc.req, tier.Stream{Stdout: func(s string) { mu.Lock(); streamed.WriteString(s); mu.Unlock() }})
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			tc.check(t, got, streamed.String())
		})
	}
}

// TestCommandBadRequests: what cannot run is a clear invalid-argument error, and the session lives on.
func TestCommandBadRequests(t *testing.T) {
	ctx := context.Background()
	s, c := commandSession(t, api.Limits{TimeoutMS: 20000})
	cases := []struct {
		name string
		req  api.CommandRequest
		want string
	}{
		{"no such program", api.CommandRequest{Cmd: "no-such-program"}, "no-such-program"},
		{"no such cwd", api.CommandRequest{Cmd: "pwd", Cwd: "/nowhere"}, "/nowhere"},
		{"args with shell", api.CommandRequest{Cmd: "echo", Args: []string{"x"}, Shell: true}, "shell"},
		{"timeout over the maximum", api.CommandRequest{Cmd: "true", TimeoutMS: 1 << 30}, "timeout_ms"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Command(ctx, tc.req, tier.Stream{})
			if errdefs.ClassOf(err) != errdefs.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an invalid-argument error naming %q", err, tc.want)
			}
		})
	}
	if !s.Alive() {
		t.Fatal("a bad command ended the session")
	}
	if _, _, _, err := c.CommandRead(ctx, 99999, tier.CommandOffsets{}, 0); errdefs.ClassOf(err) != errdefs.NotFound {
		t.Fatalf("unknown pid: %v", err)
	}
}

// TestCommandBackground: a background command is read while it runs, fed stdin, then killed; it
// shares the cells' files and keeps running across a cell.
func TestCommandBackground(t *testing.T) {
	ctx := context.Background()
	s, c := commandSession(t, api.Limits{TimeoutMS: 20000})
	if res, err := s.Run(ctx, "open('/home/user/cell.txt', 'w').write('from the cell')", tier.Stream{}); err != nil || res.Error != nil {
		t.Fatalf("%v %+v", err, res)
	}
	got, err := c.Command(ctx, api.CommandRequest{Cmd: "cat cell.txt", Shell: true}, tier.Stream{})
	if err != nil || got.Stdout != "from the cell" {
		t.Fatalf("a command after a cell: %v %+v", err, got)
	}

	bg, err := c.Command(ctx, api.CommandRequest{Cmd: "cat", Background: true, Stdin: "first\n"}, tier.Stream{})
	if err != nil || bg.State != api.CommandRunning || bg.PID <= 1 {
		t.Fatalf("%v %+v", err, bg)
	}
	ticker, err := c.Command(ctx, api.CommandRequest{Cmd: "for i in 1 2 3 4 5 6 7 8 9; do echo tick $i; sleep 0.2; done; sleep 60", Shell: true, Background: true}, tier.Stream{})
	if err != nil {
		t.Fatal(err)
	}
	read := func(pid int, want string) *api.Command {
		t.Helper()
		var off tier.CommandOffsets
		var all strings.Builder
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			st, next, _, err := c.CommandRead(ctx, pid, off, 200*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			all.WriteString(st.Stdout)
			off = next
			if strings.Contains(all.String(), want) || st.State != api.CommandRunning {
				st.Stdout = all.String()
				return st
			}
		}
		t.Fatalf("command %d: no %q in %q", pid, want, all.String())
		return nil
	}
	if st := read(bg.PID, "first\n"); st.State != api.CommandRunning {
		t.Fatalf("%+v", st)
	}
	// A cell runs while the background commands keep going.
	if res, err := s.Run(ctx, "print(2 + 2)", tier.Stream{}); err != nil || res.Stdout != "4\n" {
		t.Fatalf("%v %+v", err, res)
	}
	if err := c.CommandInput(ctx, bg.PID, api.CommandInput{Data: "second\n"}); err != nil {
		t.Fatal(err)
	}
	read(bg.PID, "second\n")
	if st := read(ticker.PID, "tick 3"); st.State != api.CommandRunning {
		t.Fatalf("ticker: %+v", st)
	}
	list, err := c.Commands(ctx)
	if err != nil || len(list) != 2 || list[0].PID != bg.PID || list[1].PID != ticker.PID || list[0].Stdout != "" {
		t.Fatalf("%v %+v", err, list)
	}
	if err := c.CommandSignal(ctx, ticker.PID, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	st := read(ticker.PID, "never")
	if st.State != api.CommandKilled || st.Signal != "SIGTERM" || !strings.Contains(st.Stdout, "tick 1\n") {
		t.Fatalf("killed ticker: %+v", st)
	}
	// Closing stdin ends cat.
	if err := c.CommandInput(ctx, bg.PID, api.CommandInput{Data: "last\n", Close: true}); err != nil {
		t.Fatal(err)
	}
	st = read(bg.PID, "never")
	if st.State != api.CommandExited || st.ExitCode != 0 || st.Stdout != "first\nsecond\nlast\n" {
		t.Fatalf("cat after close: %+v", st)
	}
	// Conflict, not a bad request: a fast command can end before input meant for it arrives, and
	// callers (the E2B surface closing stdin after a start) read it as "already over".
	if err := c.CommandInput(ctx, bg.PID, api.CommandInput{Data: "x"}); errdefs.ClassOf(err) != errdefs.Conflict {
		t.Fatalf("stdin of an ended command: %v", err)
	}
}

// TestCommandBackgroundRing: a background command's output past the cap keeps its newest part.
func TestCommandBackgroundRing(t *testing.T) {
	ctx := context.Background()
	_, c := commandSession(t, api.Limits{TimeoutMS: 20000, MaxOutputBytes: 1000})
	bg, err := c.Command(ctx, api.CommandRequest{Cmd: "seq 1 2000; echo end", Shell: true, Background: true}, tier.Stream{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _, _, err := c.CommandRead(ctx, bg.PID, tier.CommandOffsets{}, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != api.CommandRunning {
			if !st.Truncated || !strings.HasSuffix(st.Stdout, "2000\nend\n") || strings.Contains(st.Stdout, "\n10\n") || len(st.Stdout) > 1000 {
				t.Fatalf("%+v", st)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still running: %+v", st)
		}
	}
}

// TestCommandBackgroundTimeout: a background command is stopped at its time limit too.
func TestCommandBackgroundTimeout(t *testing.T) {
	ctx := context.Background()
	_, c := commandSession(t, api.Limits{TimeoutMS: 20000})
	bg, err := c.Command(ctx, api.CommandRequest{Cmd: "sleep", Args: []string{"60"}, Background: true, TimeoutMS: 300}, tier.Stream{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, _, _, err := c.CommandRead(ctx, bg.PID, tier.CommandOffsets{}, 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != api.CommandRunning {
			if st.State != api.CommandTimedOut {
				t.Fatalf("%+v", st)
			}
			return
		}
	}
	t.Fatal("the background command outlived its time limit by 10 s")
}

// TestEnvOnHeavy: env of a run and of a session reaches os.environ, and a session's reaches its
// commands too.
func TestEnvOnHeavy(t *testing.T) {
	ctx := context.Background()
	t.Run("run env", func(t *testing.T) {
		res := run(t, api.RunRequest{Code: "import os; print(os.environ['A'], os.environ['HOME'])", Env: map[string]string{"A": "x y"}})
		if res.Stdout != "x y /home/user\n" {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("session env in cells and commands", func(t *testing.T) {
		s, c := commandSession(t, api.Limits{})
		if err := s.(tier.Environ).SetEnv(ctx, map[string]string{"TOKEN": "abc"}); err != nil {
			t.Fatal(err)
		}
		if res, err := s.Run(ctx, "import os; print(os.environ['TOKEN'])", tier.Stream{}); err != nil || res.Stdout != "abc\n" {
			t.Fatalf("%v %+v", err, res)
		}
		got, err := c.Command(ctx, api.CommandRequest{Cmd: `echo $TOKEN $MORE`, Shell: true, Env: map[string]string{"MORE": "more"}}, tier.Stream{})
		if err != nil || got.Stdout != "abc more\n" {
			t.Fatalf("%v %+v", err, got)
		}
	})
}

// TestCommandCancelKillsOnlyTheCommand: cancelling a foreground command's context (a client that went
// away) kills the command and answers promptly; the session and its state live on.
func TestCommandCancelKillsOnlyTheCommand(t *testing.T) {
	s, c := commandSession(t, api.Limits{TimeoutMS: 60000})
	if res, err := s.Run(context.Background(), "kept = 7", tier.Stream{}); err != nil || res.Error != nil {
		t.Fatalf("%v %+v", err, res)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Command(ctx, api.CommandRequest{Cmd: "sleep", Args: []string{"30"}}, tier.Stream{})
	if !errors.Is(err, context.Canceled) || time.Since(start) > 20*time.Second {
		t.Fatalf("%v after %v", err, time.Since(start))
	}
	if !s.Alive() {
		t.Fatal("cancelling a command ended the session")
	}
	if res, err := s.Run(context.Background(), "print(kept)", tier.Stream{}); err != nil || res.Stdout != "7\n" {
		t.Fatalf("%v %+v", err, res)
	}
	got, err := c.Command(context.Background(), api.CommandRequest{Cmd: "sh -c 'ls /proc | grep -c ^[0-9]'", Shell: true}, tier.Stream{})
	if n, _ := strconv.Atoi(strings.TrimSpace(got.Stdout)); err != nil || n > 6 {
		t.Fatalf("the cancelled sleep still runs? %v %+v", err, got)
	}
}

// BenchmarkCommandTrue: a foreground `true` in a heavy session (spawn, read to its end).
func BenchmarkCommandTrue(b *testing.B) {
	ctx := context.Background()
	s, err := eng.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(ctx)
	c := s.(tier.Commander)
	for b.Loop() {
		if got, err := c.Command(ctx, api.CommandRequest{Cmd: "true"}, tier.Stream{}); err != nil || got.State != api.CommandExited {
			b.Fatalf("%v %+v", err, got)
		}
	}
}

// TestCommandIsBoundedByTheMemoryLimit: a command that allocates past the session's memory limit does
// not get the memory: it fails, or is killed, or the sandbox is (then the session ends).
func TestCommandIsBoundedByTheMemoryLimit(t *testing.T) {
	ctx := context.Background()
	_, c := commandSession(t, api.Limits{TimeoutMS: 30000, MemoryLimitMB: 256})
	got, err := c.Command(ctx, api.CommandRequest{Cmd: "python3", Args: []string{"-c",
		"b = bytearray(700 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('allocated')"}}, tier.Stream{})
	switch {
	case err != nil && errors.Is(err, tier.ErrGone):
		// The memory cgroup's OOM kill took the sandbox; the error says so.
		if !strings.Contains(err.Error(), "memory limit") {
			t.Fatalf("the error does not name the memory limit: %v", err)
		}
	case err != nil:
		t.Fatal(err)
	case strings.Contains(got.Stdout, "allocated") || got.State == api.CommandExited && got.ExitCode == 0:
		t.Fatalf("a command got 700 MiB in a 256 MiB session: %+v", got)
	default:
		t.Logf("the command was stopped: %s %s exit %d, stderr %.200q", got.State, got.Signal, got.ExitCode, got.Stderr)
	}
}
