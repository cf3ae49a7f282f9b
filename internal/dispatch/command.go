package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Shell commands in sessions (docs/commands.md). They run on the heavy tier, in the session's own
// sandbox; like cells they take the session for their whole run, except that a follower of a
// background command (CommandFollow) takes it only for short reads, so cells and files keep working
// while one is attached.

// How long a follower's read waits in the sandbox for output, and how long it lets go of the session
// between reads; shortWait is how long another request waits for such a read instead of being refused
// as busy.
const (
	followWait = 50 * time.Millisecond
	followGap  = 5 * time.Millisecond
	shortWait  = 250 * time.Millisecond
)

// errNoShell is wrapped by the error of a command in a session that cannot reach the heavy tier.
var errNoShell = errors.New("shell commands need the heavy tier")

// commander is the session's sandbox as a tier.Commander; an auto session on nano moves to heavy for
// it first (the move replays its cells, as for an import that needs heavy). mu is held.
func (s *Session) commander(ctx context.Context) (tier.Commander, error) {
	if !s.onHeavy() {
		switch {
		case !s.auto:
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("session %q is on tier %q, which has no shell: %w (start the session with tier %q, or %q to move there when needed)",
				s.id, api.TierNano, errNoShell, api.TierHeavy, api.TierAuto))
		case !s.movable():
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("session %q is on tier %q: %w, and %s", s.id, api.TierNano, errNoShell, s.stayReason()))
		}
		if _, err := s.moveLocked(ctx, "a shell command needs the heavy tier"); err != nil {
			return nil, fmt.Errorf("moving session %q to heavy for a shell command: %w", s.id, err)
		}
	}
	c, ok := s.sb.(tier.Commander)
	if !ok {
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("session %q: %w, and its tier has none", s.id, errNoShell))
	}
	return c, nil
}

// background is the session's sandbox as a tier.Commander for calls on a background command, which
// only a heavy session can have. mu is held.
func (s *Session) background(pid int) (tier.Commander, error) {
	c, ok := s.sb.(tier.Commander)
	if !s.onHeavy() || !ok {
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("session %q has no command %d: it is on tier %q, which has no shell", s.id, pid, api.TierNano))
	}
	return c, nil
}

// Command runs a shell command in the session's sandbox: a foreground command to its end, its output
// streamed to out.Stdout and out.Stderr; a background one is started and described at once (State
// running), to be followed with CommandState, CommandFollow, CommandInput and CommandSignal. A
// session on nano answers errdefs.InvalidArgument naming the heavy tier, unless it is of tier auto
// and may move: then it moves to heavy first.
func (s *Session) Command(ctx context.Context, req api.CommandRequest, out Output) (*api.Command, error) {
	if err := limits.CheckCommand(req); err != nil {
		return nil, err
	}
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	// A foreground command that ran is a step, snapshotted like a cell once it answered; a background
	// one is not (what it does lands in whichever step comes next).
	start, n := time.Now(), -1
	defer func() { s.stepDone(n) }()
	ctx = s.withGuard(ctx)
	defer s.guard.Drain() // a command's network events are in the sink, not the next cell's result
	c, err := s.commander(ctx)
	if err != nil {
		return nil, err
	}
	if req.Background {
		return c.Command(ctx, req, out.stream())
	}
	// A foreground command is a run of the tenant's on heavy, like a cell.
	release, err := s.d.admitRun(ctx, api.TierHeavy, s.requested, false)
	if err != nil {
		return nil, err
	}
	defer release()
	cmd, err := c.Command(ctx, req, out.stream())
	if err == nil && cmd != nil {
		rec := newStep(api.StepCommand, s.tierName(), start, nil)
		rec.step.Code = commandLine(req)
		rec.step.ExitCode, rec.step.StdoutHead = cmd.ExitCode, head(cmd.Stdout, maxStdoutHead)
		if cmd.State != api.CommandExited {
			rec.step.ErrorType = cmd.State
		}
		rec.step.DurationMS = cmd.DurationMS
		n = s.steps.appendStep(rec)
	}
	return cmd, err
}

// commandLine is how a command step shows its command: the shell line, or the argv joined with
// Python-style quoting where an argument needs it.
func commandLine(req api.CommandRequest) string {
	if req.Shell {
		return req.Cmd
	}
	parts := append([]string{req.Cmd}, req.Args...)
	for i, p := range parts {
		if p == "" || strings.ContainsAny(p, " \t\n'\"\\$`*?[]{}()<>|&;#~") {
			parts[i] = "'" + strings.ReplaceAll(p, "'", `'\''`) + "'"
		}
	}
	return strings.Join(parts, " ")
}

// Commands describes the session's background commands, oldest first, without their output (a
// session on nano has none).
func (s *Session) Commands(ctx context.Context) ([]api.Command, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.unlock()
	c, ok := s.sb.(tier.Commander)
	if !s.onHeavy() || !ok {
		return []api.Command{}, nil
	}
	return c.Commands(ctx)
}

// CommandState describes background command pid with the output its buffers hold (the last output
// cap bytes of each stream; Truncated says older output was dropped). An unknown pid is
// errdefs.NotFound.
func (s *Session) CommandState(ctx context.Context, pid int) (*api.Command, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.unlock()
	c, err := s.background(pid)
	if err != nil {
		return nil, err
	}
	var stdout, stderr strings.Builder
	var off tier.CommandOffsets
	for {
		st, next, more, err := c.CommandRead(ctx, pid, off, 0)
		if err != nil {
			return nil, s.onCommand(pid, err)
		}
		stdout.WriteString(st.Stdout)
		stderr.WriteString(st.Stderr)
		if !more {
			st.Stdout, st.Stderr = stdout.String(), stderr.String()
			return st, nil
		}
		off = next
	}
}

// CommandInput writes in.Data to background command pid's standard input, then closes it with
// in.Close.
func (s *Session) CommandInput(ctx context.Context, pid int, in api.CommandInput) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	c, err := s.background(pid)
	if err != nil {
		return err
	}
	return s.onCommand(pid, c.CommandInput(ctx, pid, in))
}

// CommandSignal sends sig (empty: SIGKILL; see limits.Signals) to background command pid and the
// processes it started.
func (s *Session) CommandSignal(ctx context.Context, pid int, sig string) error {
	sig, err := limits.CheckSignal(sig)
	if err != nil {
		return err
	}
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	c, err := s.background(pid)
	if err != nil {
		return err
	}
	return s.onCommand(pid, c.CommandSignal(ctx, pid, sig))
}

// CommandFollow gives fn background command pid's output as it arrives, from the oldest its buffers
// still hold, until the command ends (then it returns its final state, without output: fn had it) or
// ctx ends. It holds the session only for short reads: cells, files and other calls go on meanwhile,
// and while a cell runs the output waits in the sandbox.
func (s *Session) CommandFollow(ctx context.Context, pid int, fn func(stdout, stderr string)) (*api.Command, error) {
	var off tier.CommandOffsets
	for {
		st, next, more, err := s.readCommand(ctx, pid, off)
		if err != nil {
			return nil, err
		}
		off = next
		if st.Stdout != "" || st.Stderr != "" {
			fn(st.Stdout, st.Stderr)
		}
		if st.State != api.CommandRunning && !more {
			st.Stdout, st.Stderr = "", ""
			return st, nil
		}
		if !more {
			select {
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			case <-time.After(followGap):
			}
		}
	}
}

// readCommand is one read of a follower: it waits for the session (a cell may hold it), then holds it
// as a short request. It counts as short while it waits too, so that a request arriving just after
// mu was handed to it waits for its read instead of being refused.
func (s *Session) readCommand(ctx context.Context, pid int, from tier.CommandOffsets) (*api.Command, tier.CommandOffsets, bool, error) {
	s.short.Add(1)
	defer s.short.Add(-1)
	if err := s.lockWait(ctx); err != nil {
		return nil, from, false, err
	}
	if s.closed {
		s.mu.Unlock()
		return nil, from, false, errdefs.With(errdefs.NotFound, fmt.Errorf("session %q: %w", s.id, ErrSessionGone))
	}
	s.touch(0)
	defer s.unlock()
	c, err := s.background(pid)
	if err != nil {
		return nil, from, false, err
	}
	st, next, more, err := c.CommandRead(ctx, pid, from, followWait)
	return st, next, more, s.onCommand(pid, err)
}

// onCommand names the session and command in err.
func (s *Session) onCommand(pid int, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("session %q, command %d: %w", s.id, pid, err)
}

// lockWait takes mu, waiting in line (sync.Mutex hands it to a waiter that waited long, so a stream
// of requests cannot starve a follower), or gives up when ctx ends.
func (s *Session) lockWait(ctx context.Context) error {
	if s.mu.TryLock() {
		return nil
	}
	got := make(chan struct{})
	go func() {
		s.mu.Lock()
		close(got)
	}()
	select {
	case <-got:
		return nil
	case <-ctx.Done():
		go func() {
			<-got
			s.mu.Unlock()
		}()
		return context.Cause(ctx)
	}
}

// setEnv gives sb the session's environment.
func setEnv(ctx context.Context, sb tier.Session, env map[string]string) error {
	if len(env) == 0 {
		return nil
	}
	e, ok := sb.(tier.Environ)
	if !ok {
		return errdefs.With(errdefs.InvalidArgument, errors.New("env: this tier's sessions take no environment"))
	}
	if err := e.SetEnv(ctx, env); err != nil {
		return fmt.Errorf("setting the session's env: %w", err)
	}
	return nil
}
