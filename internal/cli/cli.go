// Package cli implements the agentbox command line: argument parsing, exit codes and output formats
// on top of the engine packages.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/nano"
)

// Exit codes of agentbox itself (a program's own exit code passes through `agentbox run`).
const (
	exitUsage    = 2   // bad command line
	exitInternal = 125 // agentbox could not run the program (like docker run's 125)
)

type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	log            *slog.Logger
	// openNano and openHeavy start the engines of `agentbox run` when the run goes there; nil means
	// nano.New and heavy.New as openRun configures them (tests count or refuse the starts).
	openNano  func(ctx context.Context) (*nano.Engine, error)
	openHeavy func(ctx context.Context) (*heavyEngine, error)
}

const usage = `agentbox runs untrusted Python in isolated sandboxes.

Usage:
  agentbox run [flags] FILE|-     run a program in a fresh sandbox (- reads it from stdin)
  agentbox serve [flags]          serve the HTTP API (and MCP at /mcp), default 127.0.0.1:8080
  agentbox mcp                    serve the Model Context Protocol on stdin/stdout
  agentbox mcp add|list|rm        manage the hosted MCP servers of an agentbox server
  agentbox exec SESSION -- CMD    run a shell command in a session of an agentbox server (heavy tier)
  agentbox route [flags] FILE     print which tier a program would run on, and why
  agentbox dlp scan FILE|-        print the DLP findings (secrets, PII) in a file as JSON
  agentbox audit verify|search|report  check, search and report on the audit log
  agentbox session steps|show|rewind|fork ID [STEP]  time travel in a server's session
  agentbox drain [HOST_ID]        stop a fleet's host taking new work and wait for its sessions
  agentbox bench [flags]          measure start-up and throughput on this machine
  agentbox version                print the version and interpreter build

Run 'agentbox COMMAND -h' for a command's flags.
`

// Main runs the command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	level := slog.LevelWarn
	if os.Getenv("AGENTBOX_DEBUG") != "" {
		level = slog.LevelDebug
	}
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr,
		log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))}
	return e.main(ctx, args)
}

func (e *env) main(ctx context.Context, args []string) int {
	stdout, stderr := e.stdout, e.stderr
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	code := 0
	switch args[0] {
	case "run":
		code, err = e.run(ctx, args[1:])
	case "bench":
		err = e.bench(ctx, args[1:])
	case "serve":
		err = e.serve(ctx, args[1:])
	case "mcp":
		err = e.mcp(ctx, args[1:])
	case "exec":
		code, err = e.exec(ctx, args[1:])
	case "route":
		err = e.route(args[1:])
	case "dlp":
		code, err = e.dlpCmd(args[1:])
	case "audit":
		err = e.audit(ctx, args[1:])
	case "session":
		err = e.session(ctx, args[1:])
	case "drain":
		err = e.drain(ctx, args[1:])
	case "version", "--version":
		err = e.version()
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "agentbox: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	if err == nil {
		return code
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, errAuditBroken) {
		return 1
	}
	fmt.Fprintf(stderr, "agentbox: %v\n", err)
	return exitCodeOf(err)
}

// exitCodeOf maps an error to agentbox's exit code: a mistake on the command line, or an argument
// the engine refused (a limit above its maximum, a bad path: errdefs' invalid-argument and too-large
// classes), is a usage error; anything else means agentbox could not run the program.
func exitCodeOf(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return exitUsage
	}
	switch errdefs.ClassOf(err) {
	case errdefs.InvalidArgument, errdefs.TooLarge:
		return exitUsage
	}
	return exitInternal
}

// usageError is a mistake on the command line.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// parseInterspersed parses flags that may come before or after positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
