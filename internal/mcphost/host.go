// Package mcphost hosts third-party stdio MCP servers in agentbox sandboxes, one sandbox per server
// (heavy: gVisor with Node and Python; nano: a stdlib-only Python server on the wasm tier), and
// relays the gateway's tool calls to them under each server's policy: the allow/deny tool lists,
// DLP on arguments and text results, a time limit, and a record of every call.
//
// Registrations persist under Config.Dir. A server is started at registration (to learn its tools,
// which are checked for collisions then) or on first use, restarted with backoff when it dies, and
// stopped when idle. See docs/mcp-hosting.md.
package mcphost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// Launcher starts a registered server in a sandbox of its tier.
type Launcher interface {
	// Launch starts spec's server with srv (a host directory holding its files) at /srv. ctx bounds
	// the start only; the server runs until the LineConn is closed.
	Launch(ctx context.Context, spec *api.MCPServer, srv string) (LineConn, error)
}

// Exiter is implemented by LineConns that can say why their server ended.
type Exiter interface {
	// ExitReason is why the server ended (a crash, the memory limit); empty when unknown or when it
	// was stopped by Close. Valid once ReadLine has returned its final error.
	ExitReason() string
}

// Config configures a Host. Zero values are the defaults given per field.
type Config struct {
	// Dir holds the registrations (one directory per server); required.
	Dir string
	// Launchers start servers per tier; a tier without one refuses registrations for it.
	Launchers map[api.Tier]Launcher
	// Builtin are the gateway's own tool names, which no server's tool may take.
	Builtin []string
	// Scanner is the DLP engine for tool arguments and text results; nil means no DLP on this
	// installation: calls are relayed unscanned, and their events say so.
	Scanner Scanner
	// Recorder receives every call; nil means SlogRecorder on Logger.
	Recorder Recorder
	// Network, when set, prepares the context a server with a network policy starts under (the
	// egress data plane's guard); nil means offline only: registrations that allow hosts are refused.
	Network func(ctx context.Context, policy *api.NetworkPolicy) (context.Context, error)
	// StartTimeout bounds a server's start (sandbox, packages, MCP handshake, tool list); zero means
	// 2 minutes.
	StartTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a server that died is started again (doubling
	// per failure in a row); zero means 1 s and 1 min.
	MinBackoff, MaxBackoff time.Duration
	// Version is the gateway's version, told to servers at the handshake.
	Version string
	// Logger receives the host's logs; nil discards them.
	Logger *slog.Logger
}

// Host is the registry of hosted servers and their relay. It is safe for concurrent use.
type Host struct {
	cfg    Config
	log    *slog.Logger
	rec    Recorder
	st     store
	ctx    context.Context // background starts; cancelled by Close
	cancel context.CancelFunc

	mu       sync.Mutex
	servers  map[string]*server // by name, including ones being registered; guarded by mu
	watchers map[int]func()     // guarded by mu
	nextW    int                // guarded by mu
	closed   bool               // guarded by mu
}

// Server states, as api.MCPServerInfo.Status reports them.
const (
	StatusStopped  = "stopped"
	StatusStarting = "starting"
	StatusRunning  = "running"
	StatusFailed   = "failed"
)

// server is one registration and its running instance.
type server struct {
	h    *Host
	spec api.MCPServer // immutable after registration
	srv  string        // its files' directory

	mu        sync.Mutex
	rec       record        // Tools change when the server tells; guarded by mu
	visible   bool          // registration finished (lists show it); guarded by mu
	deleted   bool          // guarded by mu
	cur       *instance     // the running instance; guarded by mu
	starting  chan struct{} // closed when a start ends; guarded by mu
	startErr  error         // the last start's error; guarded by mu
	failures  int           // in a row; guarded by mu
	notBefore time.Time     // no start before (backoff); guarded by mu
	restarts  int           // guarded by mu
	lastErr   string        // guarded by mu
	inflight  int           // calls relayed now; guarded by mu
	lastUse   time.Time     // guarded by mu
	idle      *time.Timer   // guarded by mu
	dropped   atomic.Int64  // malformed lines dropped, over all instances
}

// instance is one start of a server.
type instance struct {
	cs *mcp.ClientSession // set before ready is closed
	lc LineConn
	// ready is closed when start is done with the instance (cs is nil if the handshake failed):
	// a server may announce tools/list_changed before it has answered initialize.
	ready chan struct{}
	dead  chan struct{} // closed once the instance has ended and reason is set
	// reason is why it ended; set before dead is closed.
	reason string
	// stopped is set when we ended it on purpose (idle, delete, Close): not a failure.
	stopped atomic.Bool
	// fault, when set, is why we ended it as a failure (a call timed out); guarded by server.mu.
	fault string
}

// New loads the registrations under cfg.Dir. None is started until used.
func New(cfg Config) (*Host, error) {
	if cfg.Dir == "" {
		return nil, errors.New("mcp host: Config.Dir is required")
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 2 * time.Minute
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rec := cfg.Recorder
	if rec == nil {
		rec = SlogRecorder{Logger: log}
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Host{cfg: cfg, log: log, rec: rec, st: store{dir: cfg.Dir}, ctx: ctx, cancel: cancel,
		servers: map[string]*server{}, watchers: map[int]func(){}}
	recs, errs := h.st.load()
	for _, err := range errs {
		log.Warn("mcp host: skipped a registration", "err", err)
	}
	for _, r := range recs {
		srv, err := h.st.writeFiles(&r.Spec)
		if err != nil {
			cancel()
			return nil, err
		}
		h.servers[r.Spec.Name] = &server{h: h, spec: r.Spec, srv: srv, rec: *r, visible: true}
	}
	return h, nil
}

// Watch calls fn (from its own goroutine) whenever the set of exposed tools may have changed; the
// returned function stops it.
func (h *Host) Watch(fn func()) (cancel func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id := h.nextW
	h.nextW++
	h.watchers[id] = fn
	return func() {
		h.mu.Lock()
		delete(h.watchers, id)
		h.mu.Unlock()
	}
}

func (h *Host) notify() {
	h.mu.Lock()
	fns := make([]func(), 0, len(h.watchers))
	for _, fn := range h.watchers {
		fns = append(fns, fn)
	}
	h.mu.Unlock()
	for _, fn := range fns {
		go fn()
	}
}

// Register validates spec, persists it and, unless spec.Lazy, starts the server to learn its
// tools: names that collide with the gateway's own or another server's are refused (Conflict), as
// is a server that cannot start. The registration belongs to ctx's tenant.
func (h *Host) Register(ctx context.Context, spec api.MCPServer) (api.MCPServerInfo, error) {
	if err := validate(&spec); err != nil {
		return api.MCPServerInfo{}, err
	}
	if _, ok := h.cfg.Launchers[spec.Tier]; !ok {
		return api.MCPServerInfo{}, errdefs.With(errdefs.Unavailable, fmt.Errorf("mcp server %s: this server has no %s tier", spec.Name, spec.Tier))
	}
	if spec.Network != nil && len(spec.Network.Allow) > 0 && h.cfg.Network == nil {
		return api.MCPServerInfo{}, invalid("%s: network.allow: this installation has no egress data plane; hosted servers are offline", spec.Name)
	}
	s := &server{h: h, spec: spec, rec: record{Spec: spec, Owner: dispatch.TenantOf(ctx).ID, Created: time.Now().UTC()}}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return api.MCPServerInfo{}, errdefs.With(errdefs.Unavailable, errors.New("mcp host: closed"))
	}
	if _, ok := h.servers[spec.Name]; ok {
		h.mu.Unlock()
		return api.MCPServerInfo{}, errdefs.With(errdefs.Conflict, fmt.Errorf("mcp server %s: already registered (delete it first)", spec.Name))
	}
	h.servers[spec.Name] = s // reserved: invisible until done
	h.mu.Unlock()
	undo := func() {
		h.mu.Lock()
		delete(h.servers, spec.Name)
		h.mu.Unlock()
		s.mu.Lock()
		s.deleted = true // a start still running (the caller gave up waiting) stops what it started
		s.mu.Unlock()
		s.stop()
		h.st.remove(spec.Name)
	}
	var err error
	if s.srv, err = h.st.writeFiles(&s.spec); err != nil {
		undo()
		return api.MCPServerInfo{}, err
	}
	if err := h.st.save(&s.rec); err != nil {
		undo()
		return api.MCPServerInfo{}, err
	}
	if !spec.Lazy {
		if _, err := s.ensure(ctx); err != nil {
			undo()
			return api.MCPServerInfo{}, fmt.Errorf("mcp server %s: starting it to list its tools: %w", spec.Name, err)
		}
		s.touch()
	}
	s.mu.Lock()
	s.visible = true
	s.mu.Unlock()
	h.log.Info("mcp host: registered a server", "server", spec.Name, "tier", spec.Tier, "owner", s.rec.Owner)
	h.notify()
	return s.info(), nil
}

// lookup finds a registered server that ctx's tenant may see (its owner, or an admin).
func (h *Host) lookup(ctx context.Context, name string) (*server, error) {
	h.mu.Lock()
	s, ok := h.servers[name]
	h.mu.Unlock()
	if ok {
		s.mu.Lock()
		ok = s.visible && !s.deleted
		owner := s.rec.Owner
		s.mu.Unlock()
		if t := dispatch.TenantOf(ctx); ok && (t.Admin || t.ID == owner) {
			return s, nil
		}
	}
	return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("mcp server %s: not registered", name))
}

// visible is the servers ctx's tenant sees, by name.
func (h *Host) visible(ctx context.Context) []*server {
	t := dispatch.TenantOf(ctx)
	h.mu.Lock()
	all := make([]*server, 0, len(h.servers))
	for _, s := range h.servers {
		all = append(all, s)
	}
	h.mu.Unlock()
	var out []*server
	for _, s := range all {
		s.mu.Lock()
		ok := s.visible && !s.deleted && (t.Admin || t.ID == s.rec.Owner)
		s.mu.Unlock()
		if ok {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].spec.Name < out[j].spec.Name })
	return out
}

// Get describes one server.
func (h *Host) Get(ctx context.Context, name string) (api.MCPServerInfo, error) {
	s, err := h.lookup(ctx, name)
	if err != nil {
		return api.MCPServerInfo{}, err
	}
	return s.info(), nil
}

// List describes the servers ctx's tenant sees.
func (h *Host) List(ctx context.Context) []api.MCPServerInfo {
	out := []api.MCPServerInfo{}
	for _, s := range h.visible(ctx) {
		out = append(out, s.info())
	}
	return out
}

// Delete stops a server and forgets its registration.
func (h *Host) Delete(ctx context.Context, name string) error {
	s, err := h.lookup(ctx, name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.deleted = true
	s.mu.Unlock()
	s.stop()
	h.mu.Lock()
	delete(h.servers, name)
	h.mu.Unlock()
	err = h.st.remove(name)
	h.log.Info("mcp host: deleted a server", "server", name)
	h.notify()
	return err
}

// Tools lists the exposed tools of the servers ctx's tenant sees, with their schemas. A server
// never started (lazy) has none until its first start.
func (h *Host) Tools(ctx context.Context) []api.MCPTool {
	out := []api.MCPTool{}
	for _, s := range h.visible(ctx) {
		s.mu.Lock()
		tools := s.rec.Tools
		s.mu.Unlock()
		for _, t := range tools {
			if !allowed(s.spec.Tools, t.Name) {
				continue
			}
			schema, err := json.Marshal(t.InputSchema)
			if err != nil {
				continue
			}
			out = append(out, api.MCPTool{Name: s.spec.Name + Separator + t.Name, Server: s.spec.Name, Tool: t.Name, Description: t.Description, InputSchema: schema})
		}
	}
	return out
}

// Close stops every server. Registrations stay on disk.
func (h *Host) Close() {
	h.mu.Lock()
	h.closed = true
	all := make([]*server, 0, len(h.servers))
	for _, s := range h.servers {
		all = append(all, s)
	}
	h.mu.Unlock()
	h.cancel()
	var wg sync.WaitGroup
	for _, s := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.stop()
		}()
	}
	wg.Wait()
}

// info is the server's description.
func (s *server) info() api.MCPServerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	status := StatusStopped
	switch {
	case s.cur != nil:
		status = StatusRunning
	case s.starting != nil:
		status = StatusStarting
	case s.failures > 0:
		status = StatusFailed
	}
	names, _ := exposed(s.spec.Name, s.spec.Tools, s.rec.Tools)
	if names == nil {
		names = []string{}
	}
	spec := s.spec
	files := []string{}
	for p := range spec.Files {
		files = append(files, p)
	}
	sort.Strings(files)
	spec.Files = nil
	return api.MCPServerInfo{MCPServer: spec, Status: status, ToolNames: names, FileNames: files, Restarts: s.restarts, DroppedLines: int(s.dropped.Load()), LastError: s.lastErr,
		Created: s.rec.Created.Format(time.RFC3339)}
}

// backoff is the wait before the next start after n failures in a row.
func (h *Host) backoff(n int) time.Duration {
	d := h.cfg.MinBackoff
	for i := 1; i < n && d < h.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, h.cfg.MaxBackoff)
}

// ensure returns the running instance's session, starting the server when there is none (after
// the backoff if it failed recently). Waiting is bounded by ctx; the start itself runs under the
// host's StartTimeout, so that one impatient caller does not fail it for the others.
func (s *server) ensure(ctx context.Context) (*instance, error) {
	for {
		s.mu.Lock()
		switch {
		case s.deleted:
			s.mu.Unlock()
			return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("mcp server %s: deleted", s.spec.Name))
		case s.cur != nil:
			in := s.cur
			s.mu.Unlock()
			return in, nil
		case s.starting != nil:
			ch := s.starting
			s.mu.Unlock()
			if in, err := s.await(ctx, ch); in != nil || err != nil {
				return in, err
			}
			continue
		}
		if wait := time.Until(s.notBefore); wait > 0 {
			s.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("mcp server %s: waiting %v to restart it after a failure: %w", s.spec.Name, wait.Round(time.Millisecond), ctx.Err())
			}
			continue
		}
		ch := make(chan struct{})
		s.starting = ch
		s.mu.Unlock()
		go func() {
			in, err := s.start()
			s.mu.Lock()
			s.starting, s.startErr = nil, err
			if err != nil {
				s.failures++
				s.lastErr = limits.Text(err.Error(), 2048)
				s.notBefore = time.Now().Add(s.h.backoff(s.failures))
			} else if s.deleted || s.h.ctx.Err() != nil { // deleted, or the host closed, meanwhile
				in.stopped.Store(true)
				in.cs.Close()
			} else {
				s.cur = in
			}
			s.mu.Unlock()
			close(ch)
		}()
		if in, err := s.await(ctx, ch); in != nil || err != nil {
			return in, err
		}
	}
}

// await waits for the start that closes ch and returns its instance or error; neither when the
// instance has ended meanwhile (the caller looks again).
func (s *server) await(ctx context.Context, ch chan struct{}) (*instance, error) {
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur, s.startErr
}

// start launches an instance, does the MCP handshake and learns its tools.
func (s *server) start() (*instance, error) {
	h := s.h
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.StartTimeout)
	defer cancel()
	if s.spec.Network != nil && h.cfg.Network != nil {
		var err error
		if ctx, err = h.cfg.Network(ctx, s.spec.Network); err != nil {
			return nil, err
		}
	}
	lc, err := h.cfg.Launchers[s.spec.Tier].Launch(ctx, &s.spec, s.srv)
	if err != nil {
		return nil, err
	}
	in := &instance{lc: lc, ready: make(chan struct{}), dead: make(chan struct{})}
	defer close(in.ready)
	client := mcp.NewClient(&mcp.Implementation{Name: "agentbox-gateway", Version: h.cfg.Version}, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) { go s.refresh(in) },
	})
	cs, err := client.Connect(ctx, &transport{lc: lc, log: h.log.With("server", s.spec.Name), dropped: &s.dropped}, nil)
	if err != nil {
		lc.Close()
		return nil, fmt.Errorf("mcp handshake: %w%s", err, exitNote(lc))
	}
	in.cs = cs
	if err := s.learn(ctx, in); err != nil {
		in.stopped.Store(true)
		cs.Close()
		return nil, err
	}
	go s.watch(in)
	h.log.Info("mcp host: started a server", "server", s.spec.Name, "tier", s.spec.Tier)
	return in, nil
}

// exitNote is ", <why the server ended>" when the LineConn knows.
func exitNote(lc LineConn) string {
	if x, ok := lc.(Exiter); ok {
		if r := x.ExitReason(); r != "" {
			return " (" + r + ")"
		}
	}
	return ""
}

// learn lists the instance's tools, checks their names and stores them.
func (s *server) learn(ctx context.Context, in *instance) error {
	var tools []*mcp.Tool
	for t, err := range in.cs.Tools(ctx, nil) {
		if err != nil {
			return fmt.Errorf("listing tools: %w", err)
		}
		tools = append(tools, t)
		if len(tools) > 1000 {
			return invalid("%s lists more than 1000 tools", s.spec.Name)
		}
	}
	names, err := exposed(s.spec.Name, s.spec.Tools, tools)
	if err != nil {
		return err
	}
	h := s.h
	// Names are checked and taken under h.mu, so that two servers starting at once cannot both
	// take one.
	h.mu.Lock()
	taken := map[string]string{}
	for name, o := range h.servers {
		if o == s {
			continue
		}
		o.mu.Lock()
		others, _ := exposed(name, o.spec.Tools, o.rec.Tools)
		o.mu.Unlock()
		for _, n := range others {
			taken[n] = name
		}
	}
	if err := collisions(s.spec.Name, names, h.cfg.Builtin, taken); err != nil {
		h.mu.Unlock()
		return err
	}
	s.mu.Lock()
	changed := !sameTools(s.rec.Tools, tools)
	s.rec.Tools = tools
	r := s.rec
	s.mu.Unlock()
	h.mu.Unlock()
	if changed {
		if err := h.st.save(&r); err != nil {
			h.log.Warn("mcp host: persisting a server's tools", "server", s.spec.Name, "err", err)
		}
		h.notify()
	}
	return nil
}

func sameTools(a, b []*mcp.Tool) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// refresh re-learns the tools after the server said they changed; a list that now collides is
// refused (the old one stays) with a warning.
func (s *server) refresh(in *instance) {
	<-in.ready
	if in.cs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.h.ctx, 30*time.Second)
	defer cancel()
	if err := s.learn(ctx, in); err != nil {
		s.h.log.Warn("mcp host: a server's new tool list was refused", "server", s.spec.Name, "err", err)
	}
}

// watch waits for an instance to end and handles it: a failure (crash, call timeout) counts
// towards the backoff and, when the server was in use recently, starts it again after it.
func (s *server) watch(in *instance) {
	in.cs.Wait()
	in.reason = exitNote(in.lc)
	if in.reason == "" {
		in.reason = " (its connection ended)"
	}
	s.mu.Lock()
	if s.cur == in {
		s.cur = nil
	}
	failed := !in.stopped.Load()
	var retry time.Duration
	if failed {
		s.failures++
		s.restarts++
		why := "the server ended" + in.reason
		if in.fault != "" {
			why = in.fault
		}
		s.lastErr = limits.Text(why, 2048)
		retry = s.h.backoff(s.failures)
		s.notBefore = time.Now().Add(retry)
		_, _, idle, _ := limitsOf(&s.spec)
		if s.deleted || time.Since(s.lastUse) > idle {
			retry = 0
		}
	}
	s.mu.Unlock()
	close(in.dead)
	if failed {
		s.h.log.Warn("mcp host: a server ended", "server", s.spec.Name, "why", s.lastErrText(), "restart_in", retry)
	}
	if retry > 0 {
		time.AfterFunc(retry, func() {
			if s.h.ctx.Err() == nil {
				s.ensure(s.h.ctx)
			}
		})
	}
}

func (s *server) lastErrText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// stop ends the running instance on purpose (not a failure) and waits for it.
func (s *server) stop() {
	s.mu.Lock()
	in := s.cur
	s.cur = nil
	if s.idle != nil {
		s.idle.Stop()
	}
	s.mu.Unlock()
	if in == nil {
		return
	}
	in.stopped.Store(true)
	in.cs.Close()
	<-in.dead
}

// touch notes a use and arms the idle stop.
func (s *server) touch() {
	_, _, idle, _ := limitsOf(&s.spec)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastUse = time.Now()
	if s.idle != nil {
		s.idle.Stop()
	}
	s.idle = time.AfterFunc(idle, s.idleCheck)
}

func (s *server) idleCheck() {
	_, _, idle, _ := limitsOf(&s.spec)
	s.mu.Lock()
	in := s.cur
	if in == nil || s.inflight > 0 || time.Since(s.lastUse) < idle {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.h.log.Info("mcp host: stopping an idle server", "server", s.spec.Name)
	s.stop()
}

// Call relays one gateway tool call ("<server>__<tool>") under the server's policy and records it.
// Every failure of the call (refused by policy, the server crashed, timed out or broke the protocol)
// is a result with IsError set, whose text says what happened; the error is non-nil only when
// there is no such tool for ctx's tenant (errdefs.NotFound).
func (h *Host) Call(ctx context.Context, name string, args json.RawMessage) (*mcp.CallToolResult, error) {
	start := time.Now()
	serverName, tool, ok := strings.Cut(name, Separator)
	if len(args) == 0 || string(args) == "null" {
		args = json.RawMessage("{}")
	}
	sum, shapeText := argsDigest(args)
	ev := Event{Time: start.UTC(), Tenant: dispatch.TenantOf(ctx).ID, Server: serverName, Tool: tool, ArgsShape: shapeText, ArgsSHA256: sum}
	finish := func(res *mcp.CallToolResult, verdict, why string) (*mcp.CallToolResult, error) {
		ev.Verdict, ev.Duration = verdict, time.Since(start)
		if why != "" {
			ev.Error = limits.Text(why, 1024)
		}
		if res == nil {
			res = errorResult(why)
		}
		ev.IsError = res.IsError
		h.rec.RecordMCPCall(ctx, ev)
		return res, nil
	}
	var s *server
	var err error
	if ok {
		s, err = h.lookup(ctx, serverName)
	}
	if !ok || err != nil {
		ev.Verdict, ev.Duration, ev.Error = VerdictUnknown, time.Since(start), "no such tool"
		h.rec.RecordMCPCall(ctx, ev)
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("mcp: no tool %q", name))
	}
	if !allowed(s.spec.Tools, tool) {
		return finish(nil, VerdictDenied, fmt.Sprintf("tool %s is not allowed by server %s's tool policy", tool, serverName))
	}
	verdict := VerdictAllowed
	scan := h.cfg.Scanner != nil && s.spec.DLP != api.DLPOff
	if scan {
		types, redacted := scanArgs(h.cfg.Scanner, args, s.spec.DLP == api.DLPRedact)
		ev.Findings = append(ev.Findings, prefixed("args:", types)...)
		if len(types) > 0 {
			switch s.spec.DLP {
			case api.DLPBlock:
				return finish(nil, VerdictBlockedDLP, fmt.Sprintf("blocked by DLP: the arguments contain %s", joinTypes(types)))
			case api.DLPRedact:
				args, verdict = redacted, VerdictRedacted
			}
		}
	}
	_, callTimeout, _, _ := limitsOf(&s.spec)
	in, err := s.ensure(ctx)
	if err != nil {
		return finish(nil, VerdictError, fmt.Sprintf("server %s is not available: %v", serverName, err))
	}
	s.mu.Lock()
	s.inflight++
	s.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	res, err := in.cs.CallTool(cctx, &mcp.CallToolParams{Name: tool, Arguments: args})
	timedOut := errors.Is(cctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
	cancel()
	s.mu.Lock()
	s.inflight--
	if err == nil {
		s.failures = 0
	}
	s.mu.Unlock()
	s.touch()
	if err != nil {
		switch {
		case timedOut:
			// A stdio server mostly serves one call at a time: one stuck in a call holds up every later
			// one, so it is stopped (and started again on the next call).
			why := fmt.Sprintf("server %s did not answer %s within %v; the server was stopped", serverName, tool, callTimeout)
			s.fail(in, why)
			return finish(nil, VerdictError, why)
		case ctx.Err() != nil:
			return finish(nil, VerdictError, fmt.Sprintf("call to %s cancelled: %v", name, ctx.Err()))
		}
		var wire *jsonrpc.Error
		if errors.As(err, &wire) {
			return finish(nil, VerdictError, fmt.Sprintf("server %s answered %s with an error: %s", serverName, tool, wire.Message))
		}
		// The connection ended, or the answer was not a tool result. When the connection is ending,
		// say why (the sandbox knows a crash or the memory limit).
		reason := ""
		select {
		case <-in.dead:
			reason = in.reason
		case <-time.After(time.Second):
		}
		why := fmt.Sprintf("server %s failed during %s: %v%s", serverName, tool, err, reason)
		return finish(nil, VerdictError, why)
	}
	if scan {
		types := scanResult(h.cfg.Scanner, res, s.spec.DLP == api.DLPRedact)
		ev.Findings = append(ev.Findings, prefixed("result:", types)...)
		if len(types) > 0 {
			switch s.spec.DLP {
			case api.DLPBlock:
				return finish(nil, VerdictBlockedDLP, fmt.Sprintf("blocked by DLP: the result contains %s", joinTypes(types)))
			case api.DLPRedact:
				verdict = VerdictRedacted
			}
		}
	}
	return finish(res, verdict, "")
}

// fail ends an instance as a failure (it is restarted with backoff).
func (s *server) fail(in *instance, why string) {
	s.mu.Lock()
	in.fault = why
	if s.cur == in {
		s.cur = nil // the next call starts another at once, not this one that is closing
	}
	s.mu.Unlock()
	in.cs.Close()
}

// scanResult scans the result's text contents (and its structured content), redacting them in
// place when asked; it returns the finding types.
func scanResult(sc Scanner, res *mcp.CallToolResult, redact bool) []string {
	found := map[string]bool{}
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			t.Text = scanString(sc, t.Text, found, redact)
		}
	}
	if res.StructuredContent != nil {
		if b, err := json.Marshal(res.StructuredContent); err == nil {
			types, out := scanArgs(sc, b, redact)
			for _, t := range types {
				found[t] = true
			}
			if redact && len(types) > 0 {
				res.StructuredContent = json.RawMessage(out)
			}
		}
	}
	types := make([]string, 0, len(found))
	for t := range found {
		types = append(types, t)
	}
	slices.Sort(types)
	return types
}

func errorResult(text string) *mcp.CallToolResult {
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: text}}}
}
