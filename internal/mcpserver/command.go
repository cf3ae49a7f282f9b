package mcpserver

import (
	"context"
	"fmt"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
)

// CommandInput is run_command's input.
type CommandInput struct {
	Session   string            `json:"session" jsonschema:"name of the session to run in (created on first use, shared with run_python and the file tools)"`
	Cmd       string            `json:"cmd" jsonschema:"the program (looked up on PATH), or with shell a command line for /bin/bash -c"`
	Args      []string          `json:"args,omitempty" jsonschema:"the program's arguments (not with shell)"`
	Shell     bool              `json:"shell,omitempty" jsonschema:"cmd is a bash command line (pipes, redirections, &&)"`
	Cwd       string            `json:"cwd,omitempty" jsonschema:"absolute working directory (default /home/user)"`
	Env       map[string]string `json:"env,omitempty" jsonschema:"variables added to the command's environment"`
	Stdin     string            `json:"stdin,omitempty" jsonschema:"text written to the command's standard input"`
	TimeoutMS int               `json:"timeout_ms,omitempty" jsonschema:"time limit in milliseconds (default: the session's)"`
}

const runCommandDescription = "Run a shell command (ls, pip list, git, grep, a script...) in a session's sandbox, next to its " +
	"Python state and files, and return its stdout, stderr and exit code. Commands need the heavy tier: a session " +
	"started on the fast nano tier moves there with its state first. The sandbox has the same limits and network " +
	"as the session's Python code."

// runCommand is the run_command tool: a foreground command in a named session.
func (t *tools) runCommand(ctx context.Context, req *mcp.CallToolRequest, in CommandInput) (*mcp.CallToolResult, *api.Command, error) {
	s, done, err := t.session(ctx, req, in.Session, true, api.SessionRequest{Tier: api.TierAuto})
	if err != nil {
		return nil, nil, err
	}
	defer done()
	cmd, err := s.Command(ctx, api.CommandRequest{Cmd: in.Cmd, Args: in.Args, Shell: in.Shell, Cwd: in.Cwd, Env: in.Env,
		Stdin: in.Stdin, TimeoutMS: in.TimeoutMS}, dispatch.Output{})
	if err != nil {
		return nil, nil, err
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: commandText(cmd)}}, IsError: cmd.State != api.CommandExited || cmd.ExitCode != 0}, cmd, nil
}

// commandText is what an agent reads of a command: its output, and how it ended unless it exited 0.
func commandText(c *api.Command) string {
	out := c.Stdout
	if c.Stderr != "" {
		if out != "" && out[len(out)-1] != '\n' {
			out += "\n"
		}
		out += "[stderr]\n" + c.Stderr
	}
	switch {
	case c.State == api.CommandTimedOut:
		out += "\n[stopped at its time limit]"
	case c.State == api.CommandKilled:
		out += fmt.Sprintf("\n[killed by %s]", c.Signal)
	case c.ExitCode != 0:
		out += fmt.Sprintf("\n[exit code %d]", c.ExitCode)
	}
	if c.Truncated {
		out += "\n[output cut at the session's output cap]"
	}
	if out == "" {
		out = "(no output)"
	}
	return out
}
