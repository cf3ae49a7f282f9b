package agentbox

import (
	"context"
	"net/http"
	"strconv"

	"github.com/entersandbox/agentbox/api"
)

// Shell commands in sessions (docs/commands.md).
type (
	CommandRequest = api.CommandRequest
	Command        = api.Command
	CommandInput   = api.CommandInput
	CommandSignal  = api.CommandSignal
)

// Command states.
const (
	CommandRunning  = api.CommandRunning
	CommandExited   = api.CommandExited
	CommandKilled   = api.CommandKilled
	CommandTimedOut = api.CommandTimedOut
)

// Command runs a shell command in the session's sandbox (heavy tier; a session of tier auto on nano
// moves there first, a nano one answers ErrInvalidArgument). A foreground command returns once it
// ended, with its exit code and output; a Background one returns at once with its PID, to be read
// with CommandState or FollowCommand, fed with CommandInput and stopped with KillCommand.
func (s *Session) Command(ctx context.Context, req CommandRequest) (*Command, error) {
	var out Command
	if err := s.c.doJSON(ctx, http.MethodPost, s.path("/commands"), req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CommandStream is Command with a foreground command's output delivered to cb.Stdout and cb.Stderr
// as it is written.
func (s *Session) CommandStream(ctx context.Context, req CommandRequest, cb Callbacks) (*Command, error) {
	var out Command
	if err := s.c.stream(ctx, s.path("/commands"), req, cb, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Commands describes the session's background commands, oldest first, without their output.
func (s *Session) Commands(ctx context.Context) ([]Command, error) {
	var out api.CommandList
	if err := s.c.doJSON(ctx, http.MethodGet, s.path("/commands"), nil, &out); err != nil {
		return nil, err
	}
	return out.Commands, nil
}

func (s *Session) commandPath(pid int, suffix string) string {
	return s.path("/commands/" + strconv.Itoa(pid) + suffix)
}

// CommandState describes background command pid with the output the server keeps of it (the last
// max_output_bytes of each stream; Truncated says older output was dropped).
func (s *Session) CommandState(ctx context.Context, pid int) (*Command, error) {
	var out Command
	if err := s.c.doJSON(ctx, http.MethodGet, s.commandPath(pid, ""), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// FollowCommand delivers background command pid's output to cb.Stdout and cb.Stderr as it is
// written (from the oldest kept) and returns its final state, without output, once it ended; or
// ctx's error.
func (s *Session) FollowCommand(ctx context.Context, pid int, cb Callbacks) (*Command, error) {
	var out Command
	if err := s.c.streamAs(ctx, http.MethodGet, s.commandPath(pid, ""), nil, cb, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CommandInput writes in.Data to background command pid's standard input, closing it after with
// in.Close.
func (s *Session) CommandInput(ctx context.Context, pid int, in CommandInput) error {
	return s.c.doJSON(ctx, http.MethodPost, s.commandPath(pid, "/stdin"), in, nil)
}

// KillCommand sends signal (empty: SIGKILL; SIGTERM, SIGINT, SIGHUP...) to background command pid and
// the processes it started.
func (s *Session) KillCommand(ctx context.Context, pid int, signal string) error {
	return s.c.doJSON(ctx, http.MethodPost, s.commandPath(pid, "/kill"), CommandSignal{Signal: signal}, nil)
}
