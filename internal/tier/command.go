package tier

import (
	"context"
	"time"

	"github.com/entersandbox/agentbox/api"
)

// Commander is a Session that runs shell commands in its sandbox (the heavy tier's). Calls are
// serialised with the session's cells like every other call.
type Commander interface {
	// Command runs req: a foreground command to its end, its output streamed to stream.Stdout and
	// Stderr (and in the answer) within the session's output cap; a background one is started and
	// described at once (State running), its output kept for CommandRead.
	Command(ctx context.Context, req api.CommandRequest, stream Stream) (*api.Command, error)
	// Commands describes the session's background commands, oldest first, without their output.
	Commands(ctx context.Context) ([]api.Command, error)
	// CommandRead describes background command pid with the output it wrote from offsets from on
	// (what its buffers still hold; Truncated says older output was dropped), waiting up to wait for
	// output or its end when there is none yet. It returns the offsets to read on from and whether
	// more output is ready beyond them. An unknown pid is errdefs.NotFound.
	CommandRead(ctx context.Context, pid int, from CommandOffsets, wait time.Duration) (*api.Command, CommandOffsets, bool, error)
	// CommandInput writes to a background command's standard input, closing it after with in.Close.
	CommandInput(ctx context.Context, pid int, in api.CommandInput) error
	// CommandSignal sends sig (a limits.Signals name) to a background command's process group.
	CommandSignal(ctx context.Context, pid int, sig string) error
}

// CommandOffsets are positions in a command's stdout and stderr, in bytes from their start.
type CommandOffsets struct {
	Stdout, Stderr int64
}

// Environ is a Session whose programs' environment can be extended (api.SessionRequest.Env).
type Environ interface {
	// SetEnv adds env to the environment of the session's later cells and commands.
	SetEnv(ctx context.Context, env map[string]string) error
}
