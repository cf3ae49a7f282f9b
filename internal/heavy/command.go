package heavy

import (
	"context"
	"encoding/json"
	"errors"

	"fmt"
	"math"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Shell commands run as children of the session's worker (agent.py, op "exec"), not through runsc
// exec: they share the cells' files and limits, end with the sandbox, and hold no host file
// descriptors, which would stop runsc checkpoint (gVisor #11439) that time travel takes of heavy
// sessions.

var (
	_ tier.Commander = (*session)(nil)
	_ tier.Environ   = (*session)(nil)
)

// commandGrace is how long past a foreground command's time limit the host waits for the agent to
// report it ended before it ends the session.
const commandGrace = 10 * time.Second

// cmdReadLine bounds a cmd_read answer: 256 KiB of each stream, which JSON may grow six-fold.
const cmdReadLine = 4 << 20

// agentCommand is a command as the agent describes it.
type agentCommand struct {
	PID        int      `json:"pid"`
	Cmd        string   `json:"cmd"`
	Args       []string `json:"args"`
	State      string   `json:"state"`
	ExitCode   int      `json:"exit_code"`
	Signal     string   `json:"signal"`
	Truncated  bool     `json:"truncated"`
	Started    float64  `json:"started"`
	DurationMS float64  `json:"duration_ms"`
	// Set by cmd_read only.
	Stdout  string `json:"stdout"`
	Stderr  string `json:"stderr"`
	OutEnd  int64  `json:"out_end"`
	ErrEnd  int64  `json:"err_end"`
	Dropped bool   `json:"dropped"`
	More    bool   `json:"more"`
}

func (c *agentCommand) api() *api.Command {
	sec, frac := math.Modf(c.Started)
	return &api.Command{PID: c.PID, Cmd: c.Cmd, Args: c.Args, State: c.State, ExitCode: c.ExitCode, Signal: c.Signal,
		Truncated: c.Truncated || c.Dropped, Stdout: c.Stdout, Stderr: c.Stderr,
		StartedAt:  time.Unix(int64(sec), int64(frac*1e9)).UTC().Format(time.RFC3339Nano),
		DurationMS: math.Round(c.DurationMS*1000) / 1000}
}

func decodeCommand(r *reply) (*agentCommand, error) {
	var c agentCommand
	if err := json.Unmarshal(r.Raw, &c); err != nil {
		return nil, protocolErr("unreadable command %s: %v", quote(r.Raw), err)
	}
	switch c.State {
	case api.CommandRunning, api.CommandExited, api.CommandKilled, api.CommandTimedOut:
	default:
		return nil, protocolErr("a command in state %s", quote([]byte(c.State)))
	}
	return &c, nil
}

// SetEnv adds env to the worker's os.environ: later cells see it, and commands inherit it.
func (ss *session) SetEnv(ctx context.Context, env map[string]string) error {
	if err := limits.CheckEnv(env); err != nil {
		return err
	}
	if len(env) == 0 {
		return nil
	}
	_, err := ss.op(ctx, map[string]any{"op": "env", "env": env}, smallLine, nil)
	return err
}

// commandTimeout is req's time limit: its own, or the session's; at most the engine's maximum.
func (ss *session) commandTimeout(req api.CommandRequest) (time.Duration, error) {
	ms := req.TimeoutMS
	if ms == 0 {
		ms = ss.limits.TimeoutMS
	}
	if ms < 0 || ms > ss.e.cfg.Max.TimeoutMS {
		return 0, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("command: timeout_ms %d is outside 0 to %d", req.TimeoutMS, ss.e.cfg.Max.TimeoutMS))
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// Command runs req in the session's sandbox (see tier.Commander). A foreground command's output past
// the session's output cap stops it (State killed, Truncated); a background command keeps the last
// cap bytes of each stream.
//
// The agent starts either kind and answers at once; a foreground command is then read until its end
// in short reads, so that cancelling ctx kills the command (the session lives on), not the sandbox.
func (ss *session) Command(ctx context.Context, req api.CommandRequest, stream tier.Stream) (*api.Command, error) {
	if err := limits.CheckCommand(req); err != nil {
		return nil, err
	}
	timeout, err := ss.commandTimeout(req)
	if err != nil {
		return nil, err
	}
	capBytes := ss.limits.MaxOutputBytes
	body := map[string]any{"op": "exec", "cmd": req.Cmd, "args": req.Args, "shell": req.Shell, "cwd": req.Cwd, "env": req.Env,
		"stdin": req.Stdin, "timeout_ms": timeout.Milliseconds(), "background": req.Background, "max_output": capBytes}
	// The reads below are bounded by their own timeouts; the caller's cancel is looked at between them.
	calls := context.WithoutCancel(ctx)
	r, err := ss.op(calls, body, smallLine, nil)
	if err != nil {
		return nil, fmt.Errorf("command %s: %w", limits.Text(req.Cmd, 100), err)
	}
	c, err := decodeCommand(r)
	if err != nil {
		return nil, ss.broke(err)
	}
	if req.Background {
		return c.api(), nil
	}
	var stdout, stderr limits.Output
	stdout.Reset(capBytes)
	stderr.Reset(capBytes)
	keep := func(w *limits.Output, cb func(string), text, name string) error {
		if text == "" {
			return nil
		}
		kept, _ := w.Write(text)
		if w.Truncated() {
			return protocolErr("a command's %s passed the %d byte cap the agent keeps to", name, capBytes)
		}
		if cb != nil {
			cb(kept)
		}
		return nil
	}
	deadline := time.Now().Add(timeout + commandGrace)
	var off tier.CommandOffsets
	for {
		if ctx.Err() != nil {
			// The command is killed, and read to its end so that the agent forgets it; the session stays.
			if ss.CommandSignal(calls, c.PID, "SIGKILL") == nil {
				for range 10 {
					st, next, more, err := ss.CommandRead(calls, c.PID, off, foregroundWait)
					if err != nil || st.State != api.CommandRunning && !more {
						break
					}
					off = next
				}
			}
			return nil, fmt.Errorf("command %s cancelled: %w", limits.Text(req.Cmd, 100), context.Cause(ctx))
		}
		if time.Now().After(deadline) {
			return nil, ss.broke(fmt.Errorf("command %d was not reported ended %v after its time limit", c.PID, commandGrace))
		}
		st, next, more, err := ss.CommandRead(calls, c.PID, off, foregroundWait)
		if errors.Is(err, errDied) {
			// The sandbox went away under the command: say why (most often the memory limit).
			return nil, fmt.Errorf("command %s: %w: %s", limits.Text(req.Cmd, 100), err, ss.e.death(ss.s, ss.limits).Message)
		}
		if err != nil {
			return nil, fmt.Errorf("command %s: %w", limits.Text(req.Cmd, 100), err)
		}
		off = next
		if err := keep(&stdout, stream.Stdout, st.Stdout, "stdout"); err != nil {
			return nil, ss.broke(err)
		}
		if err := keep(&stderr, stream.Stderr, st.Stderr, "stderr"); err != nil {
			return nil, ss.broke(err)
		}
		if st.State != api.CommandRunning && !more {
			st.Stdout, st.Stderr = stdout.String(), stderr.String()
			st.Truncated = st.Truncated || stdout.Truncated() || stderr.Truncated()
			return st, nil
		}
	}
}

// foregroundWait is how long one read of a foreground command waits for output or its end: the
// longest a cancelled caller waits before the command is killed.
const foregroundWait = 200 * time.Millisecond

// Commands describes the session's background commands.
func (ss *session) Commands(ctx context.Context) ([]api.Command, error) {
	r, err := ss.op(ctx, map[string]any{"op": "cmd_list"}, smallLine, nil)
	if err != nil {
		return nil, err
	}
	var body struct{ Commands []json.RawMessage }
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		return nil, ss.broke(protocolErr("unreadable command list: %v", err))
	}
	out := make([]api.Command, 0, len(body.Commands))
	for _, raw := range body.Commands {
		c, err := decodeCommand(&reply{Raw: raw})
		if err != nil {
			return nil, ss.broke(err)
		}
		out = append(out, *c.api())
	}
	return out, nil
}

// CommandRead describes background command pid with its output from offsets from on.
func (ss *session) CommandRead(ctx context.Context, pid int, from tier.CommandOffsets, wait time.Duration) (*api.Command, tier.CommandOffsets, bool, error) {
	r, err := ss.opFor(ctx, map[string]any{"op": "cmd_read", "pid": pid, "out_from": from.Stdout, "err_from": from.Stderr,
		"wait_ms": wait.Milliseconds()}, opTimeout+wait, cmdReadLine, nil)
	if err != nil {
		return nil, from, false, err
	}
	c, err := decodeCommand(r)
	if err != nil {
		return nil, from, false, ss.broke(err)
	}
	if c.OutEnd < from.Stdout || c.ErrEnd < from.Stderr {
		return nil, from, false, ss.broke(protocolErr("command %d's output went back from %v to %d/%d", pid, from, c.OutEnd, c.ErrEnd))
	}
	return c.api(), tier.CommandOffsets{Stdout: c.OutEnd, Stderr: c.ErrEnd}, c.More, nil
}

// CommandInput writes to a background command's stdin.
func (ss *session) CommandInput(ctx context.Context, pid int, in api.CommandInput) error {
	_, err := ss.op(ctx, map[string]any{"op": "cmd_input", "pid": pid, "data": in.Data, "close": in.Close}, smallLine, nil)
	return err
}

// CommandSignal signals a background command's process group.
func (ss *session) CommandSignal(ctx context.Context, pid int, sig string) error {
	name, err := limits.CheckSignal(sig)
	if err != nil {
		return err
	}
	_, err = ss.op(ctx, map[string]any{"op": "cmd_signal", "pid": pid, "signal": name}, smallLine, nil)
	return err
}

// broke ends a session whose agent answered nonsense.
func (ss *session) broke(err error) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.e.kill(ss.s, false)
	ss.closeLocked()
	return errdefs.With(errdefs.NotFound, fmt.Errorf("%w: %w", tier.ErrGone, err))
}
