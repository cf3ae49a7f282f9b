package cli

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/mcphost"
	"github.com/entersandbox/agentbox/internal/server"
)

// auditFlags are serve's audit log flags.
type auditFlags struct {
	// extraSinks are sinks serve adds (the fleet's audit stream); not a flag.
	extraSinks         []audit.Sink
	db, key, reportDir *string
	exports            multiFlag
	reportHour         *int
	maxAge             *string
	maxMB              *int64
	checkpointEvery    *int
	checkpointInterval *time.Duration
	sync               *bool
}

// defaultAuditDB is under the server's state root, in the one directory the heavy tier's sweep of a
// crashed server's leftovers keeps (keepDir): the audit log must outlive a crash.
func defaultAuditDB(stateDir string) string {
	if stateDir == "" {
		stateDir = defaultStateDir()
	}
	return filepath.Join(stateDir, keepDir, "audit.db")
}

func addAuditFlags(fset *flag.FlagSet) *auditFlags {
	af := &auditFlags{
		db:                 fset.String("audit-db", "", "audit log database (SQLite); default STATE_DIR/audit/audit.db; off disables the audit log (docs/audit.md)"),
		key:                fset.String("audit-key", "", "ed25519 key the audit checkpoints are signed with (created 0600 when missing, public key at KEY.pub); default AUDIT_DB.key"),
		reportDir:          fset.String("audit-report-dir", "", "write the daily audit report (json, md, html) into this directory every day at --audit-report-hour"),
		reportHour:         fset.Int("audit-report-hour", 0, "hour of the day (UTC) the daily report is written"),
		maxAge:             fset.String("audit-max-age", "", "delete audit events older than this (e.g. 90d, 720h); default keep all"),
		maxMB:              fset.Int64("audit-max-mb", 0, "delete the oldest audit events while the database is over this many MiB; default no cap"),
		checkpointEvery:    fset.Int("audit-checkpoint-every", 0, "sign a checkpoint after this many events (default 1000)"),
		checkpointInterval: fset.Duration("audit-checkpoint-interval", 0, "sign a checkpoint this long after the first event not yet covered (default 1m)"),
		sync:               fset.Bool("audit-sync", false, "make every audit commit reach the disk (survives power loss, not only a crash; slower)"),
	}
	fset.Var(&af.exports, "audit-export", "also write every audit event to FORMAT:PATH, FORMAT jsonl, ocsf or cef, PATH - for stdout (repeatable)")
	return af
}

// parseAge reads a duration that may also be given in days (90d).
func parseAge(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		d, err := strconv.Atoi(n)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("%q: want a positive number of days (90d) or a duration (720h)", s)
		}
		return time.Duration(d) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q: want a positive number of days (90d) or a duration (720h)", s)
	}
	return d, nil
}

// open opens the audit log the flags describe; nil when it is off. The sinks are closed by the
// returned func.
func (af *auditFlags) open(ctx context.Context, stateDir string, stdout io.Writer, log *slog.Logger) (*audit.Log, func(), error) {
	path := *af.db
	if path == "off" {
		return nil, func() {}, nil
	}
	if path == "" {
		path = defaultAuditDB(stateDir)
	}
	age, err := parseAge(*af.maxAge)
	if err != nil {
		return nil, nil, usagef("--audit-max-age %w", err)
	}
	if *af.maxMB < 0 || *af.checkpointEvery < 0 || *af.checkpointInterval < 0 {
		return nil, nil, usagef("--audit-max-mb, --audit-checkpoint-every and --audit-checkpoint-interval must not be negative")
	}
	if *af.reportHour < 0 || *af.reportHour > 23 {
		return nil, nil, usagef("--audit-report-hour %d: want 0 to 23", *af.reportHour)
	}
	sinks := slices.Clone(af.extraSinks)
	closeSinks := func() {
		for _, s := range sinks {
			if c, ok := s.(io.Closer); ok {
				c.Close()
			}
		}
	}
	for _, spec := range af.exports {
		s, err := audit.OpenSink(spec, stdout)
		if err != nil {
			closeSinks()
			return nil, nil, usagef("--audit-export: %w", err)
		}
		sinks = append(sinks, s)
	}
	audit.Version = version()
	l, err := audit.Open(ctx, audit.Config{Path: path, KeyPath: *af.key, CheckpointEvery: *af.checkpointEvery, CheckpointInterval: *af.checkpointInterval,
		MaxAge: age, MaxBytes: *af.maxMB << 20, Sync: *af.sync, Sinks: sinks, Logger: log})
	if err != nil {
		closeSinks()
		return nil, nil, err
	}
	return l, closeSinks, nil
}

// policyDigest is what this server enforces, from its flags and key file: the keys (as ids) with
// their roles and limits, the tenant defaults, the memory budget and the routing rules. A start
// with another digest than the last recorded one is a policy change.
func policyDigest(keys []string, keyed []server.APIKey, dcfg dispatch.Config, rulesFile string, tf *tierFlags) (string, map[string]any, error) {
	type keyPolicy struct {
		ID        string                `json:"id"`
		Admin     bool                  `json:"admin,omitempty"`
		Audit     bool                  `json:"audit,omitempty"`
		AuditOnly bool                  `json:"audit_only,omitempty"`
		Limits    dispatch.TenantLimits `json:"limits"`
	}
	var ks []keyPolicy
	for _, k := range keys {
		ks = append(ks, keyPolicy{ID: server.TenantID(k)})
	}
	for _, k := range keyed {
		ks = append(ks, keyPolicy{ID: server.TenantID(k.Key), Admin: k.Admin, Audit: k.Audit, AuditOnly: k.AuditOnly, Limits: k.Limits})
	}
	rules := "shipped"
	if rulesFile != "" {
		b, err := os.ReadFile(rulesFile)
		if err != nil {
			return "", nil, usagef("--rules: %w", err)
		}
		sum := sha256.Sum256(b)
		rules = hex.EncodeToString(sum[:])
	}
	p := map[string]any{"keys": ks, "tenant_limits": dcfg.TenantLimits, "memory_budget_mb": dcfg.MemoryBudgetMB,
		"rules_sha256": rules, "heavy": *tf.heavyMode, "package_index": *tf.packageIndex, "max_heavy_sessions": *tf.maxHeavy}
	b, _ := json.Marshal(p)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), p, nil
}

// recordPolicy records a policy.change when the policy differs from the last one recorded.
func recordPolicy(ctx context.Context, l *audit.Log, digest string, policy map[string]any) error {
	last, err := l.Search(ctx, audit.Query{Type: audit.TypePolicyChange, Limit: 1})
	if err != nil {
		return err
	}
	prev := ""
	if len(last.Events) > 0 {
		prev, _ = last.Events[0].Details["policy_sha256"].(string)
	}
	if prev == digest {
		return nil
	}
	return l.Record(ctx, audit.Event{Type: audit.TypePolicyChange, Actor: audit.ActorSystem, Details: map[string]any{
		"policy_sha256": digest, "previous_sha256": prev, "source": "serve flags and key file", "policy": policy}})
}

// sessionExpired records the reaper's closings.
func sessionExpired(l *audit.Log, log *slog.Logger) func(api.Session, string) {
	return func(info api.Session, reason string) {
		owner := info.Owner
		if owner == "" {
			owner = audit.ActorLocal
		}
		recordDetached(context.Background(), l, log, audit.Event{Type: audit.TypeSessionExpire, Actor: owner, Session: info.ID, Tier: string(info.Tier),
			Details: map[string]any{"reason": reason, "cells": info.Cells, "ttl_s": info.TTLSeconds, "last_used_at": info.LastUsedAt}},
			"session expiry", "session", info.ID)
	}
}

const auditUsage = `Usage:
  agentbox audit verify [--audit-db PATH] [--pub KEY.pub]
  agentbox audit search [--audit-db PATH] [--since 24h] [--until T] [--type egress] [--session ID]
                        [--verdict block] [--actor KEY_ID] [--q TEXT] [--limit N] [--cursor C] [--json]
  agentbox audit report [--audit-db PATH] --period daily|weekly [--date YYYY-MM-DD] [--format json|md|html] [--out FILE]

They read the database directly (also while the server runs); --audit-db defaults to serve's.
`

// audit is `agentbox audit`.
func (e *env) audit(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(e.stderr, auditUsage)
		if len(args) == 0 {
			return usagef("audit: want verify, search or report")
		}
		return flag.ErrHelp
	}
	sub, args := args[0], args[1:]
	fset := flag.NewFlagSet("audit "+sub, flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	db := fset.String("audit-db", "", "audit log database; default serve's (STATE_DIR/audit/audit.db)")
	pubFile := fset.String("pub", "", "public key file (hex) to check checkpoints against; default AUDIT_DB.key.pub")
	var q struct {
		since, until, typ, session, verdict, actor, text, cursor *string
		limit                                                    *int
		json                                                     *bool
	}
	var period, date, format, out *string
	switch sub {
	case "verify":
	case "search":
		q.since, q.until = fset.String("since", "", "events from (RFC 3339, a date, or back from now: 90m, 24h, 7d)"), fset.String("until", "", "events before")
		q.typ, q.session = fset.String("type", "", "event type or prefix (egress)"), fset.String("session", "", "session id")
		q.verdict, q.actor = fset.String("verdict", "", "allow, block, redact, ok, error or deny"), fset.String("actor", "", "API key id (key_...)")
		q.text, q.cursor = fset.String("q", "", "full-text search over hosts, paths, messages"), fset.String("cursor", "", "continue after a previous page")
		q.limit, q.json = fset.Int("limit", 50, "events per page"), fset.Bool("json", false, "print JSON (events and next_cursor)")
	case "report":
		period = fset.String("period", "daily", "daily or weekly")
		date = fset.String("date", "", "a day of the period, YYYY-MM-DD (UTC); default today")
		format = fset.String("format", "md", "json, md or html")
		out = fset.String("out", "", "write to this file instead of stdout")
	default:
		fmt.Fprint(e.stderr, auditUsage)
		return usagef("audit: unknown subcommand %q: want verify, search or report", sub)
	}
	if pos, err := parseInterspersed(fset, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("audit %s: unexpected argument %q", sub, pos[0])
	}
	path := *db
	if path == "" {
		path = defaultAuditDB("")
	}
	pf := *pubFile
	if pf == "" {
		pf = path + ".key.pub"
	}
	pubText, perr := os.ReadFile(pf)
	pub, kerr := audit.ParsePublicKey(string(pubText))
	if perr != nil || kerr != nil {
		if sub == "verify" {
			return usagef("audit verify needs the public key: %w", errors.Join(perr, kerr))
		}
		pub = nil
	}
	l, err := audit.OpenReadOnly(ctx, path, pub)
	if err != nil {
		return usageError{err}
	}
	defer l.Close()
	switch sub {
	case "verify":
		v, err := l.Verify(ctx, pub)
		if err != nil {
			return err
		}
		if !v.OK {
			fmt.Fprintf(e.stdout, "BROKEN: %s\nfirst bad event: seq %d %s\n", v.Problem, v.BadSeq, v.BadEventID)
			return errAuditBroken
		}
		fmt.Fprintf(e.stdout, "ok: events %d to %d (%d) chain intact, %d checkpoints signed by %s\n", v.FirstSeq, v.LastSeq, v.Events, v.Checkpoints, audit.KeyID(pub))
		if cp := v.LastCheckpoint; cp != nil {
			fmt.Fprintf(e.stdout, "last checkpoint: seq %d head %s at %s\n", cp.Seq, cp.Head, cp.Time)
		}
		return nil
	case "search":
		vals := map[string][]string{}
		for k, p := range map[string]*string{"since": q.since, "until": q.until, "type": q.typ, "session": q.session, "verdict": q.verdict, "actor": q.actor, "q": q.text, "cursor": q.cursor} {
			if *p != "" {
				vals[k] = []string{*p}
			}
		}
		vals["limit"] = []string{strconv.Itoa(*q.limit)}
		query, err := audit.ParseQuery(vals, time.Now())
		if err != nil {
			return usageError{err}
		}
		list, err := l.Search(ctx, query)
		if err != nil {
			return err
		}
		if *q.json {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(list)
		}
		printEvents(e.stdout, list)
		return nil
	}
	d := time.Now().UTC()
	if *date != "" {
		if d, err = time.Parse(time.DateOnly, *date); err != nil {
			return usagef("--date %q: want YYYY-MM-DD", *date)
		}
	}
	rep, err := l.Report(ctx, *period, d)
	if err != nil {
		return usageError{err}
	}
	body, _, err := audit.Render(rep, *format)
	if err != nil {
		return usageError{err}
	}
	if *out != "" {
		return os.WriteFile(*out, body, 0o600)
	}
	_, err = e.stdout.Write(body)
	return err
}

// errAuditBroken is `audit verify`'s failure: exit 1, the problem printed.
var errAuditBroken = errors.New("the audit log does not verify")

func printEvents(w io.Writer, list api.AuditEventList) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tTYPE\tVERDICT\tACTOR\tSESSION\tSUMMARY")
	for _, ev := range list.Events {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", ev.Seq, ev.Time, ev.Type, ev.Verdict, ev.Actor, ev.Session, summary(ev))
	}
	tw.Flush()
	if list.NextCursor != "" {
		fmt.Fprintf(w, "more: --cursor %s\n", list.NextCursor)
	}
}

// summary is an event's most telling details, for the table.
func summary(ev api.AuditEvent) string {
	var parts []string
	for _, k := range []string{"method", "host", "path", "outcome", "error_type", "exit_code", "reason", "size"} {
		if v, ok := ev.Details[k]; ok && fmt.Sprint(v) != "" {
			parts = append(parts, fmt.Sprintf("%s=%v", k, v))
		}
	}
	return strings.ReplaceAll(limits.Text(strings.Join(parts, " "), 100), "\n", " ")
}

// networkRecorder records each sandbox's egress decisions in the audit log: egress.request, or
// egress.dlp when detectors found something (types and counts, never the values). It waits for the
// commit, so a request the proxy has finished is on the record.
func networkRecorder(l *audit.Log, log *slog.Logger) func(tenant, sandbox string, e api.NetworkEvent) {
	return func(tenant, sandbox string, e api.NetworkEvent) {
		typ := audit.TypeEgressRequest
		if len(e.Detectors) > 0 {
			typ = audit.TypeEgressDLP
		}
		ev := audit.Event{Type: typ, Actor: cmp.Or(tenant, audit.ActorLocal), Verdict: audit.VerdictOf(e.Verdict),
			Details: map[string]any{"host": e.Host, "port": e.Port, "method": e.Method, "path": e.Path,
				"bytes_out": e.BytesOut, "bytes_in": e.BytesIn, "rule": e.Rule, "source": e.Source,
				"reason": e.Reason, "verdict": e.Verdict, "detectors": audit.Detectors(e.Detectors)}}
		if strings.HasPrefix(sandbox, "ses_") {
			ev.Session = sandbox
		} else {
			ev.Sandbox = sandbox
		}
		recordDetached(context.Background(), l, log, ev, "network event", "sandbox", sandbox, "host", e.Host)
	}
}

// mcpRecorder records hosted MCP servers' relayed calls in the audit log (mcp.call).
type mcpRecorder struct {
	l   *audit.Log
	log *slog.Logger
}

func (r mcpRecorder) RecordMCPCall(ctx context.Context, ev mcphost.Event) {
	details := map[string]any{"server": ev.Server, "tool": ev.Tool, "args_shape": ev.ArgsShape,
		"args_sha256": ev.ArgsSHA256, "verdict": ev.Verdict, "duration_ms": float64(ev.Duration.Microseconds()) / 1000,
		"is_error": ev.IsError, "detectors": audit.Detectors(ev.Findings)}
	if ev.Error != "" {
		details["error"] = ev.Error
	}
	recordDetached(ctx, r.l, r.log, audit.Event{Type: audit.TypeMCPCall, Actor: cmp.Or(ev.Tenant, audit.ActorLocal),
		Verdict: audit.VerdictOf(ev.Verdict), Details: details, Time: ev.Time}, "MCP call", "server", ev.Server, "tool", ev.Tool)
}

// recordDetached records ev for something that has already happened: past the end of ctx (a
// request's, whose client may be gone), for at most 30 s. A failure is logged as what, with attrs.
func recordDetached(ctx context.Context, l *audit.Log, log *slog.Logger, ev audit.Event, what string, attrs ...any) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := l.Record(rctx, ev); err != nil {
		log.Error("audit: "+what+" not recorded", append(attrs, "err", err)...)
	}
}
