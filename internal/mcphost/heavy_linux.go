package mcphost

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/limits"
)

// HeavyEngine is what the heavy launcher needs of the heavy tier (*heavy.Engine).
type HeavyEngine interface {
	StartProcess(ctx context.Context, spec heavy.ProcessSpec) (*heavy.Process, error)
}

// npmDir is where a server's npm packages are mounted in its sandbox.
const npmDir = "/opt/mcp/npm"

// HeavyLauncher runs a server as the only process of a heavy sandbox (gVisor, read-only root with
// Python and Node): its stdin and stdout are the MCP connection, its files are at /srv and its npm
// packages, installed on the host, at /opt/mcp/npm, both read-only.
type HeavyLauncher struct {
	Engine HeavyEngine
	// NPM is the host's npm; empty means "npm" on PATH.
	NPM string
	// NPMCache holds installed package sets (one directory per set); empty means the heavy
	// cache's "npm" directory.
	NPMCache string
	// NPMRegistry is the registry URL npm fetches from; empty means npm's own configuration.
	NPMRegistry string
	// Logger receives npm's progress; nil discards it.
	Logger *slog.Logger

	mu sync.Mutex // one npm install at a time: sets are shared and installs are heavy
}

// Launch implements Launcher.
func (l *HeavyLauncher) Launch(ctx context.Context, spec *api.MCPServer, srv string) (LineConn, error) {
	memory, _, _, maxLine := limitsOf(spec)
	env := []string{"PATH=" + npmDir + "/node_modules/.bin:/usr/local/bin:/usr/bin:/bin", "NODE_PATH=" + npmDir + "/node_modules"}
	for k, v := range spec.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env[2:])
	mounts := []heavy.Mount{{Source: srv, Destination: "/srv"}}
	if len(spec.Packages) > 0 {
		dir, err := l.prepare(ctx, spec.Packages)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, heavy.Mount{Source: dir, Destination: npmDir})
	}
	p, err := l.Engine.StartProcess(ctx, heavy.ProcessSpec{Argv: spec.Command, Env: env, Dir: "/srv", Mounts: mounts, MemoryMB: memory, MaxLineBytes: maxLine})
	if err != nil {
		return nil, fmt.Errorf("starting the heavy sandbox: %w", err)
	}
	return &heavyConn{p: p}, nil
}

// prepare installs an npm package set on the host (no install scripts run) into the cache, once
// per set, and returns its directory.
func (l *HeavyLauncher) prepare(ctx context.Context, pkgs []string) (string, error) {
	names := make([]string, len(pkgs))
	for i, p := range pkgs {
		names[i] = strings.TrimPrefix(p, "npm:")
	}
	sort.Strings(names)
	cache := l.NPMCache
	if cache == "" {
		cache = filepath.Join(heavy.CacheDir(), "npm")
	}
	sum := sha256.Sum256([]byte(l.NPMRegistry + "\n" + strings.Join(names, "\n")))
	dir := filepath.Join(cache, hex.EncodeToString(sum[:12]))
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("npm cache: %w", err)
	}
	tmp, err := os.MkdirTemp(cache, "install-")
	if err != nil {
		return "", fmt.Errorf("npm cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	npm := l.NPM
	if npm == "" {
		npm = "npm"
	}
	args := []string{"install", "--prefix", tmp, "--no-audit", "--no-fund", "--ignore-scripts", "--omit=dev", "--no-save"}
	if l.NPMRegistry != "" {
		args = append(args, "--registry", l.NPMRegistry)
	}
	cmd := exec.CommandContext(ctx, npm, append(append(args, "--"), names...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", errdefs.With(errdefs.InvalidArgument, fmt.Errorf("npm install %s: %w: %s", strings.Join(names, " "), err, limits.Text(string(out), 2048)))
	}
	if l.Logger != nil {
		l.Logger.Info("mcp host: installed npm packages", "packages", names, "dir", dir)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("npm cache: %w", err)
	}
	return dir, nil
}

// heavyConn is a heavy process as a LineConn.
type heavyConn struct {
	p *heavy.Process
	// fault is the read error that ended the connection (a line over the cap), for ExitReason.
	fault atomic.Pointer[string]
}

func (c *heavyConn) ReadLine(ctx context.Context) ([]byte, error) {
	b, err := c.p.ReadLine(ctx)
	switch {
	case err == nil || ctx.Err() != nil:
	case errors.Is(err, io.EOF):
		// The server closed stdout: it is exiting. Why is known before Close kills what is left.
		if why := c.exit(); why != "" {
			c.fault.CompareAndSwap(nil, &why)
		}
	default:
		why := err.Error()
		c.fault.CompareAndSwap(nil, &why)
	}
	return b, err
}
func (c *heavyConn) WriteLine(ctx context.Context, b []byte) error {
	return c.p.WriteLine(ctx, b)
}
func (c *heavyConn) Close() { c.p.Close() }

// ExitReason implements Exiter: the sandbox's end (crash or memory limit) and the start of the
// server's stderr.
func (c *heavyConn) ExitReason() string {
	if why := c.fault.Load(); why != nil {
		return *why
	}
	return c.exit()
}

// exit is the sandbox's end (crash or memory limit) and the start of the server's stderr; empty
// when it was stopped by Close or has not exited within a few seconds.
func (c *heavyConn) exit() string {
	select {
	case <-c.p.Done():
	case <-time.After(3 * time.Second): // stdout closed, the sandbox still exiting: it is not known yet
		return ""
	}
	e := c.p.Exit()
	if e == nil {
		return ""
	}
	why := e.Type + ": " + e.Message
	if s := strings.TrimSpace(c.p.Stderr()); s != "" {
		why += "; stderr: " + limits.Text(s, 500)
	}
	return why
}
