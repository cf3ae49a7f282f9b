// Package local runs agentbox sandboxes inside the calling process, without a server: the nano tier
// (CPython on WebAssembly in wazero; a fresh interpreter per run, started from a memory snapshot in
// about a millisecond).
//
// It carries the interpreter (about 20 MB, embedded in the binary) and wazero, which is why it is a
// package of its own: the HTTP client, package github.com/entersandbox/agentbox, needs neither. The
// interpreter is built by build/pywasm/build.sh; a checkout without it does not compile this package.
// Requests and results are the HTTP API's types (package api).
package local

import (
	"context"
	"log/slog"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Engine runs sandboxes in this process. It is safe for concurrent use; Close releases it.
type Engine struct {
	eng *nano.Engine
	// sessions is the server's session registry (ids, idle TTL, one request at a time) over the
	// in-process nano engine, so that a local session behaves exactly like a served one.
	sessions *dispatch.Dispatcher
}

// Option configures New.
type Option func(*nano.Config)

// WithDefaults sets the limits used where a request leaves a field zero (zero fields here: 30 s,
// 256 MiB, 1 MiB of output per stream).
func WithDefaults(l api.Limits) Option { return func(c *nano.Config) { c.Defaults = l } }

// WithMaxLimits sets the largest limits a request may ask for (zero fields: 10 min, 2048 MiB, 64 MiB).
func WithMaxLimits(l api.Limits) Option { return func(c *nano.Config) { c.Max = l } }

// WithMaxConcurrent sets how many runs execute at once (zero: GOMAXPROCS).
func WithMaxConcurrent(n int) Option { return func(c *nano.Config) { c.MaxConcurrent = n } }

// WithPoolSize sets how many restored sandboxes are kept ready (zero: 4; negative disables the pool).
func WithPoolSize(n int) Option { return func(c *nano.Config) { c.PoolSize = n } }

// WithLogger sends the engine's logs to l (nil: discarded).
func WithLogger(l *slog.Logger) Option { return func(c *nano.Config) { c.Logger = l } }

// New starts an in-process engine. It compiles the embedded interpreter (cached on disk after the
// first time) and takes its start-up snapshot.
func New(ctx context.Context, opts ...Option) (*Engine, error) {
	var cfg nano.Config
	for _, o := range opts {
		o(&cfg)
	}
	eng, err := nano.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// No memory budget: the engine's own session cap and limits bound what this process holds.
	d := dispatch.New(eng, dispatch.Config{MemoryBudgetMB: -1, NanoSlots: cfg.MaxConcurrent, Logger: cfg.Logger})
	return &Engine{eng: eng, sessions: d}, nil
}

// Run executes req.Code in a fresh sandbox. A program's own failure (exception, limit) is reported in
// the Result; the error is for requests that are invalid or cannot be served.
func (e *Engine) Run(ctx context.Context, req api.RunRequest) (*api.Result, error) {
	return e.eng.Run(ctx, req, tier.Stream{})
}

// Close ends the sessions and stops the engine; runs in progress are cancelled when ctx is done.
func (e *Engine) Close(ctx context.Context) error {
	e.sessions.Close()
	return e.eng.Close(ctx)
}

// Session is an in-process sandbox that keeps its interpreter between runs. One cell runs at a time
// (a second call meanwhile is refused); a session left idle for ten minutes is closed.
type Session struct {
	s *dispatch.Session
}

// NewSession starts a session with the given limits (zero fields: the engine's defaults).
func (e *Engine) NewSession(ctx context.Context, limits api.Limits) (*Session, error) {
	s, err := e.sessions.NewSession(ctx, api.SessionRequest{Tier: api.TierNano, Limits: limits})
	if err != nil {
		return nil, err
	}
	return &Session{s: s}, nil
}

// Run executes code in the session; variables, imports and files persist.
func (s *Session) Run(ctx context.Context, code string) (*api.Result, error) {
	return s.s.Run(ctx, code, dispatch.Output{})
}

// Upload writes a file into the session's filesystem at the absolute path p.
func (s *Session) Upload(p string, data []byte) error {
	return s.s.WriteFile(context.Background(), p, data)
}

// Download reads the file at the absolute path p from the session's filesystem.
func (s *Session) Download(p string) ([]byte, error) {
	return s.s.ReadFile(context.Background(), p, 0)
}

// Close ends the session.
func (s *Session) Close(context.Context) error {
	s.s.Close()
	return nil
}
