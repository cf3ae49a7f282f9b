package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/api"
)

// exec is `agentbox exec [flags] SESSION -- COMMAND [ARG...]`: a shell command in a session of an
// agentbox server, its output streamed to ours. The command's exit code becomes agentbox's; a command
// stopped by a signal exits 128+signal, one stopped at its time limit 124 (like timeout(1)).
func (e *env) exec(ctx context.Context, args []string) (int, error) {
	fset := flag.NewFlagSet("exec", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	client := e.mcpClient(fset)
	shell := fset.Bool("shell", false, "COMMAND is one command line for /bin/bash -c (no ARGs)")
	cwd := fset.String("cwd", "", "working directory in the sandbox (default /home/user)")
	var envs multiFlag
	fset.Var(&envs, "env", "NAME=VALUE added to the command's environment (repeatable)")
	timeout := fset.Int("timeout-ms", 0, "time limit (default: the session's)")
	stdin := fset.Bool("stdin", false, "send agentbox's standard input to the command")
	background := fset.Bool("background", false, "start it in the background and print its pid")
	asJSON := fset.Bool("json", false, "print the command's state as JSON instead of streaming its output")
	fset.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: agentbox exec [flags] SESSION -- COMMAND [ARG...]")
		fset.PrintDefaults()
	}
	before, command := args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		before, command = args[:i], args[i+1:]
	}
	pos, err := parseInterspersed(fset, before)
	if err != nil {
		return 0, err
	}
	if len(pos) == 1 && len(command) == 0 {
		return 0, usagef("exec: no COMMAND after --: usage: agentbox exec [flags] SESSION -- COMMAND [ARG...]")
	}
	if len(pos) != 1 {
		return 0, usagef("usage: agentbox exec [flags] SESSION -- COMMAND [ARG...]")
	}
	req := api.CommandRequest{Cmd: command[0], Args: command[1:], Shell: *shell, Cwd: *cwd, TimeoutMS: *timeout, Background: *background}
	if *shell {
		req.Cmd, req.Args = strings.Join(command, " "), nil
	}
	for _, kv := range envs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return 0, usagef("exec: --env %q: want NAME=VALUE", kv)
		}
		if req.Env == nil {
			req.Env = map[string]string{}
		}
		req.Env[k] = v
	}
	if *stdin {
		b, err := io.ReadAll(e.stdin)
		if err != nil {
			return 0, fmt.Errorf("exec: reading stdin: %w", err)
		}
		req.Stdin = string(b)
	}
	c, err := client()
	if err != nil {
		return 0, err
	}
	sess, err := c.Session(ctx, pos[0])
	if err != nil {
		return 0, apiErr(err)
	}
	var cmd *agentbox.Command
	if *asJSON || *background {
		cmd, err = sess.Command(ctx, req)
	} else {
		cmd, err = sess.CommandStream(ctx, req, agentbox.Callbacks{
			Stdout: func(text string) { io.WriteString(e.stdout, text) },
			Stderr: func(text string) { io.WriteString(e.stderr, text) },
		})
	}
	if err != nil {
		return 0, apiErr(err)
	}
	switch {
	case *asJSON:
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(cmd); err != nil {
			return 0, err
		}
	case *background:
		fmt.Fprintln(e.stdout, cmd.PID)
		return 0, nil
	case cmd.Truncated:
		fmt.Fprintln(e.stderr, "agentbox: the output passed the session's output cap and was cut; the command was stopped")
	}
	return commandExit(cmd), nil
}

// commandExit is the exit status a shell would give cmd.
func commandExit(cmd *agentbox.Command) int {
	switch cmd.State {
	case api.CommandTimedOut:
		return api.ExitTimeout
	case api.CommandKilled:
		if n, ok := linuxSignals[cmd.Signal]; ok {
			return 128 + n
		}
		return 128 + linuxSignals["SIGKILL"]
	}
	return cmd.ExitCode
}

// linuxSignals are the numbers of the signals a sandbox reports: the guest is Linux whatever the
// host, so the host's own numbering (macOS differs) does not apply.
var linuxSignals = map[string]int{
	"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6, "SIGBUS": 7,
	"SIGFPE": 8, "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11, "SIGUSR2": 12, "SIGPIPE": 13,
	"SIGALRM": 14, "SIGTERM": 15, "SIGCHLD": 17, "SIGCONT": 18, "SIGSTOP": 19, "SIGTSTP": 20,
	"SIGXCPU": 24, "SIGXFSZ": 25,
}
