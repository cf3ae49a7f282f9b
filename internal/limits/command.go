package limits

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// MaxEnv caps the variables one request adds to a sandbox's environment, and MaxEnvBytes their
// names and values together.
const (
	MaxEnv      = 256
	MaxEnvBytes = 64 << 10
)

// CheckEnv refuses environment variables a sandbox could not be given: empty names, names with '='
// or NUL, values with NUL, too many or too large (errdefs.InvalidArgument).
func CheckEnv(env map[string]string) error {
	if len(env) > MaxEnv {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("env has %d variables, more than the %d allowed", len(env), MaxEnv))
	}
	size := 0
	for k, v := range env {
		switch {
		case k == "":
			return errdefs.With(errdefs.InvalidArgument, errors.New("env: an empty variable name"))
		case strings.ContainsAny(k, "=\x00"):
			return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("env: variable name %q contains '=' or NUL", Text(k, 100)))
		case strings.ContainsRune(v, 0):
			return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("env: the value of %q contains NUL", Text(k, 100)))
		}
		size += len(k) + len(v)
	}
	if size > MaxEnvBytes {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("env is %d bytes, more than the %d allowed", size, MaxEnvBytes))
	}
	return nil
}

// Signals are the signals a command may be sent (api.CommandSignal); the empty name means SIGKILL.
var Signals = []string{"SIGKILL", "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGSTOP", "SIGCONT"}

// CheckSignal refuses a signal name outside Signals and returns the name to send.
func CheckSignal(name string) (string, error) {
	if name == "" {
		return "SIGKILL", nil
	}
	for _, s := range Signals {
		if strings.EqualFold(name, s) || strings.EqualFold("SIG"+name, s) {
			return s, nil
		}
	}
	return "", errdefs.With(errdefs.InvalidArgument, fmt.Errorf("unknown signal %q: one of %s", Text(name, 50), strings.Join(Signals, ", ")))
}

// CheckCommand refuses a command request that cannot run: no cmd, args with shell, NUL bytes, a
// relative working directory, a negative timeout, a bad env (errdefs.InvalidArgument). Limits
// against a session's maxima are the tier's to check.
func CheckCommand(req api.CommandRequest) error {
	bad := func(format string, args ...any) error {
		return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("command: "+format, args...))
	}
	switch {
	case strings.TrimSpace(req.Cmd) == "":
		return bad("cmd is empty")
	case req.Shell && len(req.Args) > 0:
		return bad("args must be empty with shell (cmd is the whole command line)")
	case strings.ContainsRune(req.Cmd, 0):
		return bad("cmd contains NUL")
	case req.TimeoutMS < 0:
		return bad("timeout_ms %d is negative", req.TimeoutMS)
	case req.Cwd != "" && !path.IsAbs(req.Cwd):
		return bad("cwd %q is not an absolute path", Text(req.Cwd, 200))
	case strings.ContainsRune(req.Cwd, 0):
		return bad("cwd contains NUL")
	}
	for i, a := range req.Args {
		if strings.ContainsRune(a, 0) {
			return bad("args[%d] contains NUL", i)
		}
	}
	return CheckEnv(req.Env)
}
