package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/console"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// scope is what a key may do beyond running code: read the audit log, or only that.
type scope struct {
	audit     bool // may use /v1/audit/*
	auditOnly bool // may use nothing else (a read-only auditor's key)
}

// actor is who an event is recorded for: the key's id, or "local" on a server without keys.
func actor(ctx context.Context) string {
	if id := dispatch.TenantOf(ctx).ID; id != "" {
		return id
	}
	return audit.ActorLocal
}

// errAuditFailed wraps a Record failure: the operation happened but is not on the record, so the
// client is not told it succeeded.
func errAuditFailed(err error) error {
	return errdefs.With(errdefs.Unavailable, fmt.Errorf("the audit log could not record this request, so it is not acknowledged: %w", err))
}

// record writes e for the request's key before the request is answered. Without an audit log it
// does nothing.
func (s *Server) record(ctx context.Context, e audit.Event) error {
	return recordTo(ctx, s.cfg.Audit, s.log, e)
}

func recordTo(ctx context.Context, l *audit.Log, log *slog.Logger, e audit.Event) error {
	if l == nil {
		return nil
	}
	if e.Actor == "" {
		e.Actor = actor(ctx)
	}
	if id, ok := ctx.Value(requestIDKey).(string); ok {
		if e.Details == nil {
			e.Details = map[string]any{}
		}
		e.Details["request_id"] = id // ties the event to the request's log line and X-Request-Id
	}
	// The request may have been cancelled (client gone) after the operation was done: the event is
	// written all the same, bounded.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := l.Record(rctx, e); err != nil {
		log.Error("audit record failed", "type", e.Type, "err", err)
		return errAuditFailed(err)
	}
	return nil
}

// MCPSandboxes is what the MCP handler runs through (mcpserver.Sandboxes).
type MCPSandboxes interface {
	Run(ctx context.Context, req api.RunRequest, out dispatch.Output) (*api.RunResponse, error)
	NewSession(ctx context.Context, req api.SessionRequest) (*dispatch.Session, error)
	Session(ctx context.Context, id string) (*dispatch.Session, error)
}

// AuditMCP wraps what the MCP handler runs through so that its one-shot runs and session starts are
// recorded like the HTTP API's (source "mcp"), for the key the MCP connection was opened with; nil
// l returns sb. Cells run in an MCP session go to the session itself and are the MCP server's to
// record (mcp.call).
func AuditMCP(sb MCPSandboxes, l *audit.Log, log *slog.Logger) MCPSandboxes {
	if l == nil {
		return sb
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return auditedMCP{sb, l, log}
}

type auditedMCP struct {
	MCPSandboxes
	l   *audit.Log
	log *slog.Logger
}

func (a auditedMCP) Run(ctx context.Context, req api.RunRequest, out dispatch.Output) (*api.RunResponse, error) {
	start := time.Now()
	resp, err := a.MCPSandboxes.Run(ctx, req, out)
	var res *api.Result
	if resp != nil {
		res = &resp.Result
	}
	e := runEvent(req.Code, "", req.Tier, req.Limits, req.Packages, len(req.Files), res, err, time.Since(start))
	e.Details["source"] = "mcp"
	if aerr := recordTo(ctx, a.l, a.log, e); aerr != nil {
		return nil, aerr
	}
	return resp, err
}

func (a auditedMCP) NewSession(ctx context.Context, req api.SessionRequest) (*dispatch.Session, error) {
	sess, err := a.MCPSandboxes.NewSession(ctx, req)
	e := audit.Event{Type: audit.TypeSessionCreate, Details: map[string]any{"tier_requested": string(req.Tier), "limits": req.Limits, "source": "mcp"}}
	if err != nil {
		e.Verdict, e.Details["error_type"] = audit.VerdictError, errdefs.ClassOf(err).Name()
	} else {
		info := sess.Info()
		e.Session, e.Tier, e.Details["ttl_s"] = info.ID, string(info.Tier), info.TTLSeconds
	}
	if aerr := recordTo(ctx, a.l, a.log, e); aerr != nil {
		if sess != nil {
			sess.Close()
		}
		return nil, aerr
	}
	return sess, err
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// runEvent describes a run (one-shot or a session's cell): the code as its hash and size, never in
// clear.
func runEvent(code string, session string, asked api.Tier, lim api.Limits, pkgs []string, files int, res *api.Result, err error, took time.Duration) audit.Event {
	d := map[string]any{"code_sha256": digest([]byte(code)), "code_size": len(code), "tier_requested": string(asked),
		"limits": lim, "request_ms": took.Milliseconds()}
	if len(pkgs) > 0 {
		d["packages"] = pkgs
	}
	if files > 0 {
		d["files_in"] = files
	}
	e := audit.Event{Type: audit.TypeRun, Session: session, Details: d}
	switch {
	case err != nil:
		e.Verdict = audit.VerdictError
		d["outcome"], d["error_type"], d["message"] = "refused", errdefs.ClassOf(err).Name(), limits.Text(err.Error(), audit.MaxValue)
	case res != nil:
		e.Tier = string(res.Tier)
		d["exit_code"], d["duration_ms"], d["route_reason"] = res.ExitCode, res.DurationMS, res.RouteReason
		if res.FallbackFrom != "" {
			d["fallback_from"] = string(res.FallbackFrom)
		}
		d["outcome"] = "ok"
		if res.Error != nil || res.ExitCode != 0 {
			d["outcome"] = "error"
		}
		if res.Error != nil {
			d["error_type"] = res.Error.Type
		}
		for flag, on := range map[string]bool{"timed_out": res.TimedOut, "memory_exceeded": res.MemoryExceeded, "output_truncated": res.OutputTruncated} {
			if on {
				d[flag] = true
			}
		}
	}
	return e
}

// installEvent records the packages a run or session asked for, and whether they went in.
func installEvent(session string, pkgs []string, err error) audit.Event {
	e := audit.Event{Type: audit.TypePackageInstall, Session: session, Tier: string(api.TierHeavy),
		Details: map[string]any{"packages": pkgs, "outcome": "ok"}}
	if err != nil {
		e.Verdict = audit.VerdictError
		e.Details["outcome"], e.Details["error_type"], e.Details["message"] = "error", errdefs.ClassOf(err).Name(), limits.Text(err.Error(), audit.MaxValue)
	}
	return e
}

// recordAuthFailure records a refused request: who sent it (address), what for, why; never the key.
func (s *Server) recordAuthFailure(r *http.Request, reason string) {
	tenant := dispatch.TenantOf(r.Context()).ID
	if tenant == "" {
		tenant = audit.ActorSystem
	}
	err := s.record(r.Context(), audit.Event{Type: audit.TypeAuthFailure, Actor: tenant, Verdict: audit.VerdictDeny, Details: map[string]any{
		"remote": r.RemoteAddr, "method": limits.Text(r.Method, 32), "path": limits.Text(r.URL.Path, 512), "reason": reason,
		"has_key": strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ")}})
	if err != nil {
		s.log.Warn("auth failure not recorded", "err", err)
	}
}

// checkScope refuses audit routes to keys without the audit scope, and every other route (but
// /healthz) to read-only audit keys.
func (s *Server) checkScope(r *http.Request, sc scope) error {
	if s.keys.empty() || console.IsConsolePath(r.URL.Path) { // the console's API calls are checked themselves
		return nil
	}
	isAudit := strings.HasPrefix(r.URL.Path, "/v1/audit/")
	switch {
	case isAudit && !sc.audit:
		return errdefs.With(errdefs.Forbidden, errors.New("this API key has no audit scope: give it the word audit in the key file (docs/audit.md)"))
	case !isAudit && sc.auditOnly && r.URL.Path != "/healthz":
		return errdefs.With(errdefs.Forbidden, errors.New("this API key is read-only audit: it may only use /v1/audit/"))
	}
	return nil
}

func (s *Server) auditLog(w http.ResponseWriter, r *http.Request) *audit.Log {
	if s.cfg.Audit == nil {
		s.fail(w, r, errdefs.With(errdefs.NotFound, errors.New("the audit log is off on this server (serve with --audit-db)")))
	}
	return s.cfg.Audit
}

func (s *Server) auditEvents(w http.ResponseWriter, r *http.Request) {
	l := s.auditLog(w, r)
	if l == nil {
		return
	}
	q, err := audit.ParseQuery(r.URL.Query(), time.Now())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	list, err := l.Search(r.Context(), q)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) auditReport(w http.ResponseWriter, r *http.Request) {
	l := s.auditLog(w, r)
	if l == nil {
		return
	}
	q := r.URL.Query()
	for k := range q {
		if k != "date" && k != "format" {
			s.fail(w, r, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("unknown report parameter %q (want date, format)", limits.Text(k, 64))))
			return
		}
	}
	date := time.Now().UTC()
	if d := q.Get("date"); d != "" {
		t, err := time.Parse(time.DateOnly, d)
		if err != nil {
			s.fail(w, r, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("date %q: want YYYY-MM-DD", limits.Text(d, 64))))
			return
		}
		date = t
	}
	format := q.Get("format")
	if format == "" {
		format = audit.ReportJSON
	}
	if format != audit.ReportJSON && format != audit.ReportMarkdown && format != audit.ReportHTML {
		s.fail(w, r, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("format %q: want json, md or html", limits.Text(format, 64))))
		return
	}
	rep, err := l.Report(r.Context(), r.PathValue("period"), date)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	body, ct, err := audit.Render(rep, format)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", ct)
	if format == audit.ReportHTML {
		// The page is self-contained: nothing may load, nothing may run.
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	}
	w.Write(body)
}

func (s *Server) auditVerify(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("host") != "" && s.cfg.Fleet == nil {
		s.fail(w, r, errNoFleet) // in a fleet the fleet answers for another host
		return
	}
	l := s.auditLog(w, r)
	if l == nil {
		return
	}
	v, err := l.Verify(r.Context(), nil)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// fileEvent describes an upload or download: path, size and the content's sha256, never the content.
func fileEvent(typ string, sess interface{ Info() api.Session }, path string, data []byte) audit.Event {
	info := sess.Info()
	return audit.Event{Type: typ, Session: info.ID, Tier: string(info.Tier),
		Details: map[string]any{"path": limits.Text(path, audit.MaxValue), "size": len(data), "sha256": digest(data)}}
}
