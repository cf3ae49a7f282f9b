// Package tier defines what a tier is: an Engine that runs programs in fresh sandboxes and starts
// Sessions, sandboxes that keep their interpreter between cells. The nano tier (internal/nano) and the
// heavy tier (internal/heavy) implement it; internal/dispatch places runs and sessions on them through
// it and owns everything a session is beyond its sandbox (ids, idle TTLs, busy and gone, moving a
// session between tiers). A new tier is one package implementing these two interfaces (docs/tiers.md).
package tier

import (
	"context"
	"errors"

	"github.com/entersandbox/agentbox/api"
)

// Stream receives a program's output as it writes it, within its output cap; nil fields discard.
// The callbacks are called from the goroutine running the program, one at a time per run.
type Stream struct {
	Stdout, Stderr func(text string)
	// Output receives each rich output (api.Output) as the program makes it, in order with Stdout
	// and Stderr, after the caps.
	Output func(out api.Output)
}

// Collected are the files a run left under /output, within the caps they were collected with;
// Omitted names those beyond the caps (or unreadable).
type Collected struct {
	Files   map[string][]byte
	Omitted []string
}

// ErrGone is returned by a Session whose sandbox was closed or died (a timeout, a crash, an
// out-of-memory kill), classified errdefs.NotFound.
var ErrGone = errors.New("session is closed")

// Engine is one tier. It is safe for concurrent use.
type Engine interface {
	// RunCollect executes req in a fresh sandbox, streaming its output, and collects the files it left
	// under /output: each at most maxFile bytes and maxTotal in all (maxTotal zero: none). A
	// program's own failure (an exception, a limit) is in the Result; the error is for requests that
	// are invalid or cannot be served (errdefs classes).
	RunCollect(ctx context.Context, req api.RunRequest, stream Stream, maxFile, maxTotal int64) (*api.Result, *Collected, error)
	// NewSession starts a sandbox that keeps its interpreter between cells, with packages installed
	// (a tier without packages refuses any). Zero fields of limits take the tier's defaults.
	NewSession(ctx context.Context, limits api.Limits, packages []string) (Session, error)
	// Limits resolves req against the tier's defaults and maxima.
	Limits(req api.Limits) (api.Limits, error)
	// PoolReady is how many started sandboxes are ready to serve.
	PoolReady() int
	// Close stops the tier; runs in progress are stopped when ctx is done.
	Close(ctx context.Context) error
}

// Session is one sandbox kept between cells. It has no id, idle TTL or owner (dispatch's registry
// keeps those); calls on one Session are serialised by it, and once its sandbox is gone every call
// fails with ErrGone.
type Session interface {
	// Run executes one cell; variables, imports and files persist to the next.
	Run(ctx context.Context, code string, stream Stream) (*api.Result, error)
	// WriteFile places data at the absolute sandbox path p, creating parent directories.
	WriteFile(ctx context.Context, p string, data []byte) error
	// ReadFile returns the file at p, refusing one larger than max bytes (errdefs.TooLarge) before
	// reading it; max zero means the tier's own cap.
	ReadFile(ctx context.Context, p string, max int64) ([]byte, error)
	// ListFiles lists the directory dir (errdefs.NotFound when it does not exist).
	ListFiles(ctx context.Context, dir string) ([]api.FileInfo, error)
	// Alive reports whether the sandbox can still run cells.
	Alive() bool
	// Close frees the sandbox; closing twice is not an error.
	Close(ctx context.Context) error
}
