package server

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// Shell commands in sessions: POST /v1/sessions/{id}/commands and the calls on a background command
// (docs/commands.md).

// sessionCommand is POST /v1/sessions/{id}/commands: a foreground command answers its end (streamed
// as stdout/stderr events and a result event when asked), a background one its start.
func (s *Server) sessionCommand(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	var req api.CommandRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	st := s.startStream(w, r)
	before, start := sess.Info(), time.Now()
	var out dispatch.Output
	if st != nil {
		out = s.output(st)
		out.Fallback = nil
	}
	cmd, err := sess.Command(r.Context(), req, out)
	if after := sess.Info(); after.Tier != before.Tier {
		if aerr := s.record(r.Context(), audit.Event{Type: audit.TypeSessionMove, Session: after.ID, Tier: string(after.Tier),
			Details: map[string]any{"from": string(before.Tier), "to": string(after.Tier), "reason": after.RouteReason}}); aerr != nil {
			err = aerr
		}
	}
	if aerr := s.record(r.Context(), commandEvent(sess.ID(), req, cmd, err, time.Since(start))); aerr != nil {
		err = aerr
	}
	s.answer(w, r, st, err, cmd)
}

// answer writes a command's answer: JSON, or a stream's result (or error) event.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, st *stream, err error, body any) {
	switch {
	case st != nil && err != nil:
		_, eb := s.errorBody(r, err)
		st.close("error", eb)
	case st != nil:
		st.close("result", body)
	case err != nil:
		s.fail(w, r, err)
	default:
		writeJSON(w, http.StatusOK, body)
	}
}

// commandEvent is what the audit log keeps of a command: hashes and sizes of its command line and
// stdin (never them: they may carry secrets), the names of its env (never the values), its outcome.
func commandEvent(session string, req api.CommandRequest, cmd *api.Command, err error, took time.Duration) audit.Event {
	line := req.Cmd
	for _, a := range req.Args {
		line += "\x00" + a
	}
	names := make([]string, 0, len(req.Env))
	for k := range req.Env {
		names = append(names, k)
	}
	slices.Sort(names)
	d := map[string]any{"cmd_sha256": digest([]byte(line)), "cmd_size": len(line), "shell": req.Shell, "background": req.Background,
		"cwd": req.Cwd, "env_names": names, "stdin_size": len(req.Stdin), "timeout_ms": req.TimeoutMS, "request_ms": took.Milliseconds()}
	e := audit.Event{Type: audit.TypeCommand, Session: session, Tier: string(api.TierHeavy), Details: d}
	switch {
	case err != nil:
		e.Verdict, e.Tier = audit.VerdictError, ""
		d["outcome"], d["error_type"], d["message"] = "refused", errdefs.ClassOf(err).Name(), limits.Text(err.Error(), audit.MaxValue)
	case cmd != nil:
		d["pid"], d["state"], d["exit_code"], d["duration_ms"] = cmd.PID, cmd.State, cmd.ExitCode, cmd.DurationMS
		d["outcome"] = "ok"
		if cmd.State != api.CommandRunning && (cmd.State != api.CommandExited || cmd.ExitCode != 0) {
			d["outcome"] = "error"
		}
		if cmd.Signal != "" {
			d["signal"] = cmd.Signal
		}
		if cmd.Truncated {
			d["output_truncated"] = true
		}
	}
	return e
}

// commandPID is the {pid} of a command's path.
func commandPID(r *http.Request) (int, error) {
	pid, err := strconv.Atoi(r.PathValue("pid"))
	if err != nil || pid <= 0 {
		return 0, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("command pid %q is not a positive integer", limits.Text(r.PathValue("pid"), 50)))
	}
	return pid, nil
}

// listCommands is GET /v1/sessions/{id}/commands.
func (s *Server) listCommands(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	list, err := sess.Commands(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.CommandList{Commands: list})
}

// getCommand is GET /v1/sessions/{id}/commands/{pid}: the command's state and kept output, or, with
// Accept: text/event-stream, its output as stdout/stderr events as it comes (from the oldest kept)
// and a result event with its final state once it ended.
func (s *Server) getCommand(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	pid, err := commandPID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if st := s.startStream(w, r); st != nil {
		cmd, err := sess.CommandFollow(r.Context(), pid, func(stdout, stderr string) {
			if stdout != "" {
				st.event("stdout", map[string]string{"text": stdout})
			}
			if stderr != "" {
				st.event("stderr", map[string]string{"text": stderr})
			}
		})
		s.answer(w, r, st, err, cmd)
		return
	}
	cmd, err := sess.CommandState(r.Context(), pid)
	s.answer(w, r, nil, err, cmd)
}

// commandStdin is POST /v1/sessions/{id}/commands/{pid}/stdin.
func (s *Server) commandStdin(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	pid, err := commandPID(r)
	var in api.CommandInput
	if err == nil {
		err = decode(r, &in)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	err = sess.CommandInput(r.Context(), pid, in)
	e := audit.Event{Type: audit.TypeCommandInput, Session: sess.ID(), Tier: string(api.TierHeavy),
		Details: map[string]any{"pid": pid, "size": len(in.Data), "sha256": digest([]byte(in.Data)), "close": in.Close}}
	s.command(w, r, e, err)
}

// killCommand is POST /v1/sessions/{id}/commands/{pid}/kill; the body (api.CommandSignal) may be
// left out for SIGKILL.
func (s *Server) killCommand(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	if sess == nil {
		return
	}
	pid, err := commandPID(r)
	var sig api.CommandSignal
	if err == nil && r.ContentLength != 0 {
		err = decode(r, &sig)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	err = sess.CommandSignal(r.Context(), pid, sig.Signal)
	e := audit.Event{Type: audit.TypeCommandKill, Session: sess.ID(), Tier: string(api.TierHeavy),
		Details: map[string]any{"pid": pid, "signal": sig.Signal}}
	s.command(w, r, e, err)
}

// command records a call on a background command and answers it (204 when it was done).
func (s *Server) command(w http.ResponseWriter, r *http.Request, e audit.Event, err error) {
	if err != nil {
		e.Verdict, e.Details["error_type"], e.Details["message"] = audit.VerdictError, errdefs.ClassOf(err).Name(), limits.Text(err.Error(), audit.MaxValue)
	}
	if rerr := s.record(r.Context(), e); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
