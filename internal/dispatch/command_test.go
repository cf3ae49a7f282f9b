package dispatch

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// cmdHeavy is a heavy engine whose sessions run fake commands: a background command writes the
// lines of script, one per read, then exits.
type cmdHeavy struct {
	fakeHeavy
	mu       sync.Mutex
	sessions []*cmdSession // guarded by mu
}

func (f *cmdHeavy) NewSession(ctx context.Context, lim api.Limits, pk []string) (tier.Session, error) {
	s, err := f.fakeHeavy.NewSession(ctx, lim, pk)
	if err != nil {
		return nil, err
	}
	cs := &cmdSession{fakeHeavySession: s.(*fakeHeavySession), env: map[string]string{}, unblock: make(chan struct{})}
	f.mu.Lock()
	f.sessions = append(f.sessions, cs)
	f.mu.Unlock()
	return cs, nil
}

type cmdSession struct {
	*fakeHeavySession
	mu    sync.Mutex
	env   map[string]string // guarded by mu
	out   []string          // lines a background command writes; guarded by mu
	reads int               // CommandRead calls; guarded by mu
	// unblock ends a foreground command named "block".
	unblock chan struct{}
}

func (s *cmdSession) SetEnv(_ context.Context, env map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	maps.Copy(s.env, env)
	return nil
}

func (s *cmdSession) Command(_ context.Context, req api.CommandRequest, stream tier.Stream) (*api.Command, error) {
	if req.Background {
		s.mu.Lock()
		s.out = strings.SplitAfter(req.Stdin, "\n")
		s.mu.Unlock()
		return &api.Command{PID: 7, Cmd: req.Cmd, State: api.CommandRunning}, nil
	}
	if req.Cmd == "block" {
		<-s.unblock
	}
	if stream.Stdout != nil {
		stream.Stdout(req.Cmd + "\n")
	}
	return &api.Command{PID: 6, Cmd: req.Cmd, State: api.CommandExited, Stdout: req.Cmd + "\n"}, nil
}

func (s *cmdSession) Commands(context.Context) ([]api.Command, error) {
	return []api.Command{{PID: 7, State: api.CommandRunning}}, nil
}

func (s *cmdSession) CommandRead(_ context.Context, pid int, from tier.CommandOffsets, wait time.Duration) (*api.Command, tier.CommandOffsets, bool, error) {
	if pid != 7 {
		return nil, from, false, errdefs.With(errdefs.NotFound, errors.New("no such command"))
	}
	time.Sleep(wait / 5) // a read that waits a little in the sandbox
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	st := &api.Command{PID: 7, State: api.CommandRunning}
	if int(from.Stdout) < len(s.out) {
		st.Stdout = s.out[from.Stdout]
		from.Stdout++
	}
	if int(from.Stdout) >= len(s.out) {
		st.State = api.CommandExited
	}
	return st, from, false, nil
}

func (s *cmdSession) CommandInput(context.Context, int, api.CommandInput) error { return nil }
func (s *cmdSession) CommandSignal(context.Context, int, string) error          { return nil }

func TestCommandPlacement(t *testing.T) {
	ctx := context.Background()
	f := &cmdHeavy{}
	d := newDispatcher(t, Config{Heavy: f})
	noHeavy := newDispatcher(t, Config{})
	cases := []struct {
		name  string
		d     *Dispatcher
		req   api.SessionRequest
		check func(t *testing.T, s *Session, got *api.Command, err error)
	}{
		{"a nano session names the heavy tier", d, api.SessionRequest{Tier: api.TierNano}, func(t *testing.T, s *Session, got *api.Command, err error) {
			if errdefs.ClassOf(err) != errdefs.InvalidArgument || !errors.Is(err, errNoShell) || !strings.Contains(err.Error(), `tier "heavy"`) || s.Info().Tier != api.TierNano {
				t.Fatalf("%v", err)
			}
		}},
		{"an auto session on nano moves to heavy", d, api.SessionRequest{Env: map[string]string{"K": "v"}}, func(t *testing.T, s *Session, got *api.Command, err error) {
			info := s.Info()
			if err != nil || got.Stdout != "echo\n" || info.Tier != api.TierHeavy || info.MovedFrom != api.TierNano || !strings.Contains(info.RouteReason, "shell command") {
				t.Fatalf("%v %+v %+v", err, got, info)
			}
			f.mu.Lock()
			env := f.sessions[len(f.sessions)-1].env
			f.mu.Unlock()
			if env["K"] != "v" {
				t.Fatalf("the heavy session did not get the session's env: %v", env)
			}
		}},
		{"an auto session without heavy says why it stays", noHeavy, api.SessionRequest{}, func(t *testing.T, s *Session, got *api.Command, err error) {
			if errdefs.ClassOf(err) != errdefs.InvalidArgument || !errors.Is(err, errNoShell) || !strings.Contains(err.Error(), "not available here") {
				t.Fatalf("%v", err)
			}
		}},
		{"a heavy session runs it", d, api.SessionRequest{Tier: api.TierHeavy}, func(t *testing.T, s *Session, got *api.Command, err error) {
			if err != nil || got.State != api.CommandExited || s.Info().MovedFrom != "" {
				t.Fatalf("%v %+v", err, got)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tc.d.NewSession(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var streamed strings.Builder
			got, err := s.Command(ctx, api.CommandRequest{Cmd: "echo"}, Output{Stdout: func(t string) { streamed.WriteString(t) }})
			if err == nil && streamed.String() != got.Stdout {
				t.Fatalf("streamed %q, answered %q", streamed.String(), got.Stdout)
			}
			tc.check(t, s, got, err)
		})
	}
}

func TestCommandRefusals(t *testing.T) {
	ctx := context.Background()
	d := newDispatcher(t, Config{Heavy: &cmdHeavy{}})
	s, err := d.NewSession(ctx, api.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t.Run("a bad command does not move the session", func(t *testing.T) {
		if _, err := s.Command(ctx, api.CommandRequest{Cmd: " "}, Output{}); errdefs.ClassOf(err) != errdefs.InvalidArgument || s.Info().Tier != api.TierNano {
			t.Fatalf("%v %+v", err, s.Info())
		}
	})
	t.Run("no commands on nano", func(t *testing.T) {
		if list, err := s.Commands(ctx); err != nil || len(list) != 0 {
			t.Fatalf("%v %+v", err, list)
		}
		if _, err := s.CommandState(ctx, 7); errdefs.ClassOf(err) != errdefs.NotFound {
			t.Fatalf("%v", err)
		}
		if err := s.CommandInput(ctx, 7, api.CommandInput{Data: "x"}); errdefs.ClassOf(err) != errdefs.NotFound {
			t.Fatalf("%v", err)
		}
	})
	t.Run("an unknown signal", func(t *testing.T) {
		if err := s.CommandSignal(ctx, 7, "SIGNOPE"); errdefs.ClassOf(err) != errdefs.InvalidArgument {
			t.Fatalf("%v", err)
		}
	})
	t.Run("bad session env", func(t *testing.T) {
		if _, err := d.NewSession(ctx, api.SessionRequest{Env: map[string]string{"": "x"}}); errdefs.ClassOf(err) != errdefs.InvalidArgument {
			t.Fatalf("%v", err)
		}
	})
}

// TestCommandFollowLetsCellsRun: a follower gets a background command's output until it ends, while
// cells of the same session run (not refused as busy).
func TestCommandFollowLetsCellsRun(t *testing.T) {
	ctx := context.Background()
	s := newHeavySession(t)
	script := strings.Repeat("line\n", 40)
	bg, err := s.Command(ctx, api.CommandRequest{Cmd: "ticker", Background: true, Stdin: script}, Output{})
	if err != nil || bg.State != api.CommandRunning {
		t.Fatalf("%v %+v", err, bg)
	}
	var followed strings.Builder
	done := make(chan error, 1)
	var final *api.Command
	go func() {
		var err error
		final, err = s.CommandFollow(ctx, bg.PID, func(stdout, stderr string) { followed.WriteString(stdout) })
		done <- err
	}()
	cells := 0
	for {
		select {
		case err := <-done:
			if err != nil || final.State != api.CommandExited || followed.String() != script {
				t.Fatalf("%v %+v followed %q", err, final, followed.String())
			}
			if cells == 0 {
				t.Fatal("no cell ran while the follower was attached")
			}
			return
		default:
		}
		if _, err := s.Run(ctx, "1", Output{}); err != nil {
			t.Fatalf("a cell while following: %v", err)
		}
		cells++
	}
}

func TestCommandFollowEndsWithContext(t *testing.T) {
	d := newDispatcher(t, Config{Heavy: &cmdHeavy{}})
	s, err := d.NewSession(context.Background(), api.SessionRequest{Tier: api.TierHeavy})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Command(context.Background(), api.CommandRequest{Cmd: "quiet", Background: true}, Output{}); err != nil {
		t.Fatal(err)
	}
	// A command that writes for longer than the follower's ctx lasts.
	s.sb.(*cmdSession).mu.Lock()
	s.sb.(*cmdSession).out = make([]string, 1<<20)
	s.sb.(*cmdSession).mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := s.CommandFollow(ctx, 7, func(string, string) {}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v", err)
	}
}

// TestForegroundCommandTakesTheSession: a foreground command holds the session like a cell: a cell
// or another command meanwhile is refused as busy; a background command does not hold it.
func TestForegroundCommandTakesTheSession(t *testing.T) {
	ctx := context.Background()
	s := newHeavySession(t)
	if _, err := s.Command(ctx, api.CommandRequest{Cmd: "server", Background: true}, Output{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx, "1", Output{}); err != nil {
		t.Fatalf("a cell after a background command: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Command(ctx, api.CommandRequest{Cmd: "block"}, Output{})
		done <- err
	}()
	waitFor(t, func() bool { // the command holds the session
		if s.mu.TryLock() {
			s.mu.Unlock()
			return false
		}
		return true
	})
	if _, err := s.Run(ctx, "1", Output{}); !errors.Is(err, ErrSessionBusy) {
		t.Fatalf("a cell during a foreground command: %v", err)
	}
	if _, err := s.Command(ctx, api.CommandRequest{Cmd: "ls"}, Output{}); !errors.Is(err, ErrSessionBusy) {
		t.Fatalf("a command during a foreground command: %v", err)
	}
	close(s.sb.(*cmdSession).unblock)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestForegroundCommandIsAStep: a foreground command is listed as a step with its command line and
// outcome, a background one is not, and a step the tier kept no snapshot of is not rebuilt by
// replaying across a command (which would run it again).
func TestForegroundCommandIsAStep(t *testing.T) {
	ctx := context.Background()
	s := newHeavySession(t)
	if _, err := s.Command(ctx, api.CommandRequest{Cmd: "server", Background: true}, Output{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Command(ctx, api.CommandRequest{Cmd: "ls", Args: []string{"-l", "my dir"}}, Output{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx, "1", Output{}); err != nil {
		t.Fatal(err)
	}
	list := s.Steps()
	var kinds []api.StepKind
	for _, st := range list.Steps {
		kinds = append(kinds, st.Kind)
	}
	if want := []api.StepKind{api.StepStart, api.StepCommand, api.StepCell}; !slices.Equal(kinds, want) {
		t.Fatalf("steps %v, want %v", kinds, want)
	}
	if got := list.Steps[1].Code; got != "ls -l 'my dir'" {
		t.Errorf("command step's code %q", got)
	}
	err := s.Rewind(ctx, 2)
	if err == nil || !strings.Contains(err.Error(), "shell command") {
		t.Fatalf("rewind across a command without snapshots: %v", err)
	}
}

// newHeavySession is a session on a fake heavy tier whose commands the tests script, closed at the end.
func newHeavySession(t *testing.T) *Session {
	t.Helper()
	d := newDispatcher(t, Config{Heavy: &cmdHeavy{}})
	s, err := d.NewSession(context.Background(), api.SessionRequest{Tier: api.TierHeavy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}
