package api

// Shell commands in heavy sessions: POST /v1/sessions/{id}/commands and the calls on a background
// command (docs/commands.md).

// CommandRequest is POST /v1/sessions/{id}/commands. Either Cmd with Args is executed directly, or,
// with Shell, Cmd is a command line for /bin/bash -c (Args then must be empty).
type CommandRequest struct {
	Cmd   string   `json:"cmd"`
	Args  []string `json:"args,omitempty"`
	Shell bool     `json:"shell,omitempty"`
	// Cwd is the working directory; empty means /home/user.
	Cwd string `json:"cwd,omitempty"`
	// Env is added to the session's environment for this command (never the host's).
	Env map[string]string `json:"env,omitempty"`
	// Stdin is written to the command's standard input, which is then closed unless Background.
	Stdin string `json:"stdin,omitempty"`
	// TimeoutMS bounds the command; zero means the session's time limit.
	TimeoutMS int `json:"timeout_ms,omitempty"`
	// Background returns at once with the pid; the command's state and output are then read with
	// GET /v1/sessions/{id}/commands/{pid}.
	Background bool `json:"background,omitempty"`
}

// Command states.
const (
	CommandRunning  = "running"
	CommandExited   = "exited"
	CommandKilled   = "killed"    // by a signal (Signal says which), a kill request included
	CommandTimedOut = "timed_out" // stopped at its time limit
)

// Command is a command's state and output: the answer of a foreground command, and of
// GET /v1/sessions/{id}/commands/{pid}.
type Command struct {
	PID   int      `json:"pid"`
	Cmd   string   `json:"cmd"`
	Args  []string `json:"args,omitempty"`
	State string   `json:"state"` // one of the Command* states
	// ExitCode is set once the command ended (-1 when killed by a signal).
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	// Truncated is set when the output passed the session's output cap and was cut.
	Truncated  bool    `json:"truncated,omitempty"`
	StartedAt  string  `json:"started_at"`
	DurationMS float64 `json:"duration_ms"`
}

// CommandList is GET /v1/sessions/{id}/commands: the session's background commands, running or ended.
type CommandList struct {
	Commands []Command `json:"commands"`
}

// CommandInput is POST /v1/sessions/{id}/commands/{pid}/stdin: data for the command's standard input;
// Close closes it afterwards.
type CommandInput struct {
	Data  string `json:"data"`
	Close bool   `json:"close,omitempty"`
}

// CommandSignal is POST /v1/sessions/{id}/commands/{pid}/kill; Signal defaults to "SIGKILL".
type CommandSignal struct {
	Signal string `json:"signal,omitempty"`
}
