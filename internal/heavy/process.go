package heavy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// ProcessSpec is a long-running program (a stdio MCP server) that a sandbox of its own runs in place
// of the agent: its stdin and stdout are the host's pipes, so nothing else in the sandbox can speak on
// them, and each line it writes is capped on the host as the agent's replies are.
type ProcessSpec struct {
	// Argv is the program and its arguments; a bare name is looked up on the sandbox's PATH.
	Argv []string
	// Env entries (NAME=value) are added to the sandbox's environment, replacing a default of the
	// same name (PATH, HOME...).
	Env []string
	// Dir is the working directory; empty means /home/user.
	Dir string
	// Mounts are host directories bound read-only into the sandbox.
	Mounts []Mount
	// MemoryMB is the sandbox's memory limit; zero means the engine's default. It is checked
	// against the engine's maximum.
	MemoryMB int
	// MaxLineBytes caps one line the program writes to stdout; a longer one ends ReadLine with a
	// protocol error (the caller stops the process). Zero means 1 MiB.
	MaxLineBytes int
}

// Mount binds a host directory read-only at Destination.
type Mount struct {
	Source, Destination string
}

// Process is a program running alone in a heavy sandbox. ReadLine and WriteLine may be used from
// different goroutines; each by one at a time.
type Process struct {
	e       *Engine
	s       *sandbox
	memory  int
	release func() // gives the engine slot back; safe to call twice
}

// StartProcess takes one of the engine's MaxConcurrent slots (waiting in its bounded queue) and
// starts spec in a new sandbox with the usual confinement: read-only root, the network of the
// netpolicy.Guard in ctx (none without one), an unprivileged user, memory, CPU and process limits.
// The slot is held until Close.
func (e *Engine) StartProcess(ctx context.Context, spec ProcessSpec) (*Process, error) {
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, errdefs.With(errdefs.InvalidArgument, errors.New("heavy process: empty command"))
	}
	lim, err := e.Limits(api.Limits{MemoryLimitMB: spec.MemoryMB})
	if err != nil {
		return nil, err
	}
	for _, m := range spec.Mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Destination) {
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("heavy process: mount %s -> %s: both paths must be absolute", m.Source, m.Destination))
		}
	}
	release, err := e.admit(ctx)
	if err != nil {
		return nil, err
	}
	e.busy.Add(1)
	defer e.busy.Add(-1)
	sp := e.spec(lim.MemoryLimitMB, false, false)
	proc := sp["process"].(map[string]any)
	proc["args"] = spec.Argv
	proc["env"] = mergeEnv(proc["env"].([]string), spec.Env)
	if spec.Dir != "" {
		proc["cwd"] = spec.Dir
	}
	mounts := sp["mounts"].([]map[string]any)
	for _, m := range spec.Mounts {
		mounts = append(mounts, map[string]any{"destination": m.Destination, "type": "bind", "source": m.Source, "options": []string{"rbind", "ro"}})
	}
	sp["mounts"] = mounts
	s, err := e.newSandboxSpec(ctx, lim.MemoryLimitMB, sp, false, "run")
	if err != nil {
		release()
		return nil, err
	}
	if s, err = e.attach(ctx, s, false); err != nil {
		release()
		return nil, err
	}
	// A hosted server reaches the network its registration allows, through the Guard in ctx.
	if err := e.bind(ctx, s); err != nil {
		e.destroy(s)
		release()
		return nil, err
	}
	maxLine := spec.MaxLineBytes
	if maxLine <= 0 {
		maxLine = 1 << 20
	}
	s.maxLine.Store(int64(maxLine))
	return &Process{e: e, s: s, memory: lim.MemoryLimitMB, release: release}, nil
}

// mergeEnv is base with extra's entries added, an entry of extra replacing base's of the same name.
func mergeEnv(base, extra []string) []string {
	out := make([]string, 0, len(base)+len(extra))
	names := map[string]bool{}
	for _, kv := range extra {
		name, _, _ := strings.Cut(kv, "=")
		names[name] = true
	}
	for _, kv := range base {
		if name, _, _ := strings.Cut(kv, "="); !names[name] {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// ReadLine returns the next line the program wrote to stdout, without its newline. It returns
// io.EOF once the program has closed stdout (exited), and an error wrapping errProtocol for a line
// longer than the spec's MaxLineBytes; after either, no more lines come.
func (p *Process) ReadLine(ctx context.Context) ([]byte, error) {
	select {
	case l, ok := <-p.s.lines:
		if !ok {
			return nil, io.EOF
		}
		return l.b, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// writeTimeout bounds a write to a program that does not read its stdin.
const writeTimeout = 10 * time.Second

// WriteLine writes b and a newline to the program's stdin, within ctx's deadline or writeTimeout.
func (p *Process) WriteLine(ctx context.Context, b []byte) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(writeTimeout)
	}
	p.s.in.SetWriteDeadline(deadline)
	if _, err := p.s.in.Write(append(b[:len(b):len(b)], '\n')); err != nil {
		return fmt.Errorf("writing to the heavy process: %w", err)
	}
	return nil
}

// Done is closed when the sandbox has exited.
func (p *Process) Done() <-chan struct{} { return p.s.done }

// Exit says why the sandbox ended, once Done is closed: nil when Close stopped it, else a crash or
// the memory limit (as an api.Error's type and message).
func (p *Process) Exit() *api.Error {
	if p.s.killed.Load() {
		return nil
	}
	return p.e.death(p.s, api.Limits{MemoryLimitMB: p.memory})
}

// Stderr is the start of what runsc and the program wrote to stderr (64 KiB at most).
func (p *Process) Stderr() string { return p.s.stderr.String() }

// Close stops the sandbox, removes its traces and gives its slot back. It may be called more than
// once.
func (p *Process) Close() {
	p.s.killed.Store(true)
	p.e.destroy(p.s)
	p.release()
}

// CacheDir is the heavy tier's cache (runsc, root filesystems, packages): $AGENTBOX_HEAVY_CACHE, or
// agentbox/heavy under the user's cache directory.
func CacheDir() string { return cacheDir() }
