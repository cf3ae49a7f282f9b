// Package agentbox is the Go SDK of EnterSandBox: run untrusted Python in isolated sandboxes and get
// back its output, exit code, a structured error and the files it wrote.
//
// Client talks to an `agentbox serve` over HTTP. Local runs sandboxes in this process on the nano tier
// (CPython on WebAssembly in wazero; a fresh interpreter per run, started from a memory snapshot in
// about a millisecond). Both use the HTTP API's types (package api).
package agentbox

import (
	"context"
	"log/slog"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/vfs"
)

// Types shared with the HTTP API.
type (
	Result         = api.Result
	Error          = api.Error
	Limits         = api.Limits
	RunRequest     = api.RunRequest
	File           = api.File
	RunBody        = api.RunBody
	RunResponse    = api.RunResponse
	SessionRequest = api.SessionRequest
	SessionInfo    = api.Session
	FileInfo       = api.FileInfo
	Tier           = api.Tier
)

// Local runs sandboxes in this process. It is safe for concurrent use; Close releases it.
type Local struct {
	eng *nano.Engine
}

// Option configures NewLocal.
type Option func(*nano.Config)

// WithDefaults sets the limits used where a request leaves a field zero.
func WithDefaults(l Limits) Option { return func(c *nano.Config) { c.Defaults = l } }

// WithMaxLimits sets the largest limits a request may ask for.
func WithMaxLimits(l Limits) Option { return func(c *nano.Config) { c.Max = l } }

// WithMaxConcurrent sets how many runs execute at once (default GOMAXPROCS).
func WithMaxConcurrent(n int) Option { return func(c *nano.Config) { c.MaxConcurrent = n } }

// WithPoolSize sets how many restored sandboxes are kept ready (default 4; negative disables).
func WithPoolSize(n int) Option { return func(c *nano.Config) { c.PoolSize = n } }

// WithLogger sends the engine's logs to l.
func WithLogger(l *slog.Logger) Option { return func(c *nano.Config) { c.Logger = l } }

// NewLocal starts an in-process nano engine. It compiles the embedded interpreter (cached on disk
// after the first time) and takes its start-up snapshot.
func NewLocal(ctx context.Context, opts ...Option) (*Local, error) {
	var cfg nano.Config
	for _, o := range opts {
		o(&cfg)
	}
	eng, err := nano.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &Local{eng: eng}, nil
}

// Run executes req.Code in a fresh sandbox. A program's own failure (exception, limit) is reported in
// the Result; the error is for requests that are invalid or cannot be served.
func (l *Local) Run(ctx context.Context, req RunRequest) (*Result, error) {
	return l.eng.Run(ctx, req)
}

// LocalSession is an in-process sandbox that keeps its interpreter between runs.
type LocalSession struct {
	s *nano.Session
}

// NewSession starts a session with the given limits.
func (l *Local) NewSession(ctx context.Context, limits Limits) (*LocalSession, error) {
	s, err := l.eng.NewSession(ctx, limits, 0)
	if err != nil {
		return nil, err
	}
	return &LocalSession{s: s}, nil
}

// Run executes code in the session; variables, imports and files persist.
func (s *LocalSession) Run(ctx context.Context, code string) (*Result, error) {
	return s.s.Run(ctx, code)
}

// Upload writes a file into the session's filesystem.
func (s *LocalSession) Upload(path string, data []byte) error {
	if err := nano.ValidatePath(path); err != nil {
		return err
	}
	return s.s.WithFS(func(fs *vfs.FS) error { return fs.WriteFile(path, data, 0o644) })
}

// Download reads a file from the session's filesystem.
func (s *LocalSession) Download(path string) ([]byte, error) {
	if err := nano.ValidatePath(path); err != nil {
		return nil, err
	}
	var data []byte
	err := s.s.WithFS(func(fs *vfs.FS) error {
		var err error
		data, err = fs.ReadFile(path, 0)
		return err
	})
	return data, err
}

// Close ends the session.
func (s *LocalSession) Close(ctx context.Context) error { return s.s.Close(ctx) }

// Close stops the engine; runs in progress are cancelled when ctx is done.
func (l *Local) Close(ctx context.Context) error { return l.eng.Close(ctx) }
