// Package audit is agentbox's audit log: every run, session, file transfer, authentication failure,
// policy change and (from the egress, DLP and MCP parts) every decision, as one versioned event
// schema (docs/audit-event.schema.json) in an append-only SQLite database (pure Go, WAL, FTS5).
//
// Tamper evidence: each event's hash is sha256(previous hash || the event's exact stored bytes), and
// ed25519-signed checkpoints of the head are written every N events or minutes with a key kept in a
// file outside the database; Verify names the first bad event. Record returns once the event is
// committed; events are written by one goroutine in group commits from a bounded queue whose
// overflow blocks the caller, never drops. docs/audit.md has the guarantees and their limits.
package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, pure Go, FTS5 built in

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// SchemaVersion is the version of the stored event schema (docs/audit-event.schema.json).
const SchemaVersion = 1

// Event types. Record refuses others, so that reports and the schema know every type.
const (
	TypeRun            = "run"
	TypeSessionCreate  = "session.create"
	TypeSessionMove    = "session.move"
	TypeSessionClose   = "session.close"
	TypeSessionExpire  = "session.expire"
	TypeFileUpload     = "file.upload"
	TypeFileDownload   = "file.download"
	TypePackageInstall = "package.install"
	TypeAuthFailure    = "auth.failure"
	TypeServerStart    = "server.start"
	TypeServerStop     = "server.stop"
	TypePolicyChange   = "policy.change"
	TypeEgressRequest  = "egress.request"
	TypeEgressDLP      = "egress.dlp"
	TypeMCPCall        = "mcp.call"
	TypeRetention      = "audit.retention"
	// Time travel (docs/time-travel.md).
	TypeSessionRewind = "session.rewind"
	TypeSessionFork   = "session.fork"
	TypeStepPin       = "step.pin"
	// Shell commands (docs/commands.md).
	TypeCommand      = "command"
	TypeCommandInput = "command.input"
	TypeCommandKill  = "command.kill"
)

// Types are the event types, in the schema's order.
var Types = []string{TypeRun, TypeSessionCreate, TypeSessionMove, TypeSessionClose, TypeSessionExpire,
	TypeFileUpload, TypeFileDownload, TypePackageInstall, TypeAuthFailure, TypeServerStart, TypeServerStop,
	TypePolicyChange, TypeEgressRequest, TypeEgressDLP, TypeMCPCall, TypeRetention,
	TypeSessionRewind, TypeSessionFork, TypeStepPin, TypeCommand, TypeCommandInput, TypeCommandKill}

// Verdicts.
const (
	VerdictAllow  = "allow"
	VerdictBlock  = "block"
	VerdictRedact = "redact"
	VerdictOK     = "ok"
	VerdictError  = "error"
	VerdictDeny   = "deny"
)

// Verdicts are the verdicts an event may carry.
var Verdicts = []string{VerdictAllow, VerdictBlock, VerdictRedact, VerdictOK, VerdictError, VerdictDeny}

// Actors that are not API keys.
const (
	ActorLocal  = "local"  // a server without API keys
	ActorSystem = "system" // the server itself (start, stop, expiry, retention)
)

// Event is what a part of agentbox records. Details holds the type's own fields (docs/audit.md lists
// them); values are redacted and capped on the way in (see Redact). Egress, DLP and MCP events give
// at least: host, method, path, verdict, rule or grant and its source (egress.request); detectors as
// [{type, count}] and never the matched value (egress.dlp); server, tool, argument shape and hashes
// (mcp.call).
type Event struct {
	Type    string
	Actor   string // API key id (server.TenantID), ActorLocal or ActorSystem; empty means ActorSystem
	Session string
	Sandbox string
	Tier    string
	Verdict string // empty means VerdictOK
	Details map[string]any
	// Time is when it happened; zero means now.
	Time time.Time
}

// Config configures a Log. Zero values are the defaults given per field.
type Config struct {
	// Path is the database file; required.
	Path string
	// KeyPath is the ed25519 signing key (hex of the 32-byte seed, mode 0600, created when missing,
	// its public key written next to it as KeyPath+".pub"); empty means Path+".key". Keep it, or at
	// least the public key and the checkpoints, away from whoever can write the database.
	KeyPath string
	// CheckpointEvery and CheckpointInterval say when a signed checkpoint is written: after that many
	// events, or that long after the first event not yet checkpointed; zero means 1000 and 1 minute.
	CheckpointEvery    int
	CheckpointInterval time.Duration
	// MaxAge and MaxBytes are the retention: older events, and the oldest beyond that database size,
	// are deleted (checked at Open and every RetentionInterval), and the deletion is itself an event.
	// Zero means keep everything.
	MaxAge   time.Duration
	MaxBytes int64
	// RetentionInterval is how often retention runs; zero means 1 minute.
	RetentionInterval time.Duration
	// QueueSize bounds the events waiting to be written; a Record past it waits (never drops). Zero
	// means 4096.
	QueueSize int
	// Sync makes every commit reach the disk (SQLite synchronous=FULL) so that a power loss loses no
	// acknowledged event; false (synchronous=NORMAL in WAL mode) survives a crash of the process, not
	// of the machine.
	Sync bool
	// Sinks receive every committed event (JSON lines, OCSF, CEF: NewSink); nil means none. A sink
	// that fails is logged, not retried: the database is the record.
	Sinks []Sink
	// Logger receives sink failures and retention; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now (tests move it).
	Now func() time.Time
}

// Log is an open audit log. Its methods are safe for concurrent use.
type Log struct {
	cfg   Config
	log   *slog.Logger
	w     *sql.DB            // one connection: the writer goroutine's
	r     *sql.DB            // readers (search, reports, verify)
	key   ed25519.PrivateKey // nil on a read-only log
	pub   ed25519.PublicKey
	keyID string
	// insEvent and insFTS are prepared once on w, used by the writer only.
	insEvent, insFTS *sql.Stmt
	queue            chan *pending
	stop             chan struct{}
	done             chan struct{}
	// closeOnce guards stop; closeErr is the writer's last error, set before done is closed.
	closeOnce sync.Once
	closeErr  error
}

type pending struct {
	ev   api.AuditEvent
	ts   time.Time
	done chan error
}

// ErrClosed is Record's error after Close.
var ErrClosed = errdefs.With(errdefs.Unavailable, errors.New("the audit log is closed"))

const ddl = `
CREATE TABLE IF NOT EXISTS events(
	seq INTEGER PRIMARY KEY,
	ts INTEGER NOT NULL,
	type TEXT NOT NULL,
	actor TEXT NOT NULL,
	session TEXT NOT NULL,
	sandbox TEXT NOT NULL,
	tier TEXT NOT NULL,
	verdict TEXT NOT NULL,
	host TEXT NOT NULL,
	errtype TEXT NOT NULL,
	body TEXT NOT NULL,
	prev_hash BLOB NOT NULL,
	hash BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE INDEX IF NOT EXISTS events_type ON events(type, seq);
CREATE INDEX IF NOT EXISTS events_session ON events(session, seq);
CREATE INDEX IF NOT EXISTS events_verdict ON events(verdict, seq);
CREATE INDEX IF NOT EXISTS events_host ON events(host, seq);
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(text, content='', contentless_delete=1);
CREATE TABLE IF NOT EXISTS checkpoints(
	seq INTEGER PRIMARY KEY,
	head BLOB NOT NULL,
	ts INTEGER NOT NULL,
	key_id TEXT NOT NULL,
	sig BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v ANY NOT NULL);
`

func dsn(path string, sync bool, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	// 32 MiB of page cache per connection (SQLite's default is 2 MiB): the indexes of a log of
	// millions of events are written and read all over.
	q.Add("_pragma", "cache_size(-32768)")
	if sync {
		q.Add("_pragma", "synchronous(FULL)")
	} else {
		q.Add("_pragma", "synchronous(NORMAL)")
	}
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Set("_txlock", "immediate")
	}
	return "file:" + path + "?" + q.Encode()
}

// Open opens (creating when missing) the log at cfg.Path and starts its writer.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if cfg.Path == "" {
		return nil, errors.New("audit: no database path")
	}
	if cfg.KeyPath == "" {
		cfg.KeyPath = cfg.Path + ".key"
	}
	if cfg.CheckpointEvery <= 0 {
		cfg.CheckpointEvery = 1000
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = time.Minute
	}
	if cfg.RetentionInterval <= 0 {
		cfg.RetentionInterval = time.Minute
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4096
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	key, err := LoadOrCreateKey(cfg.KeyPath)
	if err != nil {
		return nil, err
	}
	w, err := sql.Open("sqlite", dsn(cfg.Path, cfg.Sync, false))
	if err != nil {
		return nil, fmt.Errorf("audit: opening %s: %w", cfg.Path, err)
	}
	w.SetMaxOpenConns(1)
	if _, err := w.ExecContext(ctx, ddl); err != nil {
		w.Close()
		return nil, fmt.Errorf("audit: creating the schema in %s: %w", cfg.Path, err)
	}
	if err := os.Chmod(cfg.Path, 0o600); err != nil {
		w.Close()
		return nil, fmt.Errorf("audit: %w", err)
	}
	r, err := sql.Open("sqlite", dsn(cfg.Path, cfg.Sync, true))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("audit: opening %s: %w", cfg.Path, err)
	}
	r.SetMaxOpenConns(4)
	l := &Log{cfg: cfg, log: log, w: w, r: r, key: key, pub: key.Public().(ed25519.PublicKey), keyID: KeyID(key.Public().(ed25519.PublicKey)),
		queue: make(chan *pending, cfg.QueueSize), stop: make(chan struct{}), done: make(chan struct{})}
	if l.insEvent, err = w.PrepareContext(ctx, `INSERT INTO events(seq, ts, type, actor, session, sandbox, tier, verdict, host, errtype, body, prev_hash, hash) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)`); err == nil {
		l.insFTS, err = w.PrepareContext(ctx, `INSERT INTO events_fts(rowid, text) VALUES(?, ?)`)
	}
	if err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("audit: %w", err)
	}
	if err := l.retain(ctx); err != nil {
		l.w.Close()
		l.r.Close()
		return nil, err
	}
	go l.writer()
	return l, nil
}

// OpenReadOnly opens an existing log for Search, Report and Verify only (the CLI's `agentbox audit`),
// without the signing key: pub (which may be nil) is what Verify and reports check against.
func OpenReadOnly(ctx context.Context, path string, pub ed25519.PublicKey) (*Log, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	r, err := sql.Open("sqlite", dsn(path, false, true))
	if err != nil {
		return nil, fmt.Errorf("audit: opening %s: %w", path, err)
	}
	if err := r.PingContext(ctx); err != nil {
		r.Close()
		return nil, fmt.Errorf("audit: opening %s: %w", path, err)
	}
	l := &Log{r: r, pub: pub, cfg: Config{Path: path, Now: time.Now}, log: slog.New(slog.DiscardHandler), done: make(chan struct{})}
	close(l.done)
	return l, nil
}

// PublicKey is the key checkpoints are checked against (on a read-only log, the one it was opened with).
func (l *Log) PublicKey() ed25519.PublicKey { return l.pub }

// Record writes e and returns once it is committed (or fails). It waits while the queue is full, and
// stops waiting when ctx is done (the event may then still be written).
func (l *Log) Record(ctx context.Context, e Event) error {
	if l.queue == nil {
		return errdefs.With(errdefs.Unavailable, errors.New("the audit log is open read-only"))
	}
	p, err := l.enqueue(ctx, e)
	if err != nil {
		return err
	}
	select {
	case err := <-p.done:
		return err
	case <-l.done:
		// The writer answers every event it took before it ends; one sent as it ended is lost.
		select {
		case err := <-p.done:
			return err
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		return fmt.Errorf("audit: recording %s (it may still be written): %w", e.Type, context.Cause(ctx))
	}
}

// enqueue prepares e and queues it for the writer, waiting while the queue is full.
func (l *Log) enqueue(ctx context.Context, e Event) (*pending, error) {
	ev, ts, err := l.prepare(e)
	if err != nil {
		return nil, err
	}
	p := &pending{ev: ev, ts: ts, done: make(chan error, 1)}
	select {
	case <-l.stop:
		return nil, ErrClosed
	default:
	}
	select {
	case l.queue <- p:
		return p, nil
	case <-l.stop:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, fmt.Errorf("audit: recording %s: %w", e.Type, context.Cause(ctx))
	}
}

var knownType = func() map[string]bool {
	m := map[string]bool{}
	for _, t := range Types {
		m[t] = true
	}
	return m
}()

var knownVerdict = func() map[string]bool {
	m := map[string]bool{}
	for _, v := range Verdicts {
		m[v] = true
	}
	return m
}()

// Caps on the indexed fields an event names (ids, tiers): they come from clients.
const maxField = 256

func (l *Log) prepare(e Event) (api.AuditEvent, time.Time, error) {
	if !knownType[e.Type] {
		return api.AuditEvent{}, time.Time{}, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("audit: unknown event type %q (want one of %s)", capField(e.Type), strings.Join(Types, ", ")))
	}
	if e.Verdict == "" {
		e.Verdict = VerdictOK
	}
	if !knownVerdict[e.Verdict] {
		return api.AuditEvent{}, time.Time{}, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("audit: unknown verdict %q (want one of %s)", capField(e.Verdict), strings.Join(Verdicts, ", ")))
	}
	if e.Actor == "" {
		e.Actor = ActorSystem
	}
	ts := e.Time
	if ts.IsZero() {
		ts = l.cfg.Now()
	}
	ts = ts.UTC()
	var id [10]byte
	rand.Read(id[:])
	ev := api.AuditEvent{Schema: SchemaVersion, ID: "evt_" + hex.EncodeToString(id[:]), Time: ts.Format(time.RFC3339Nano),
		Type: e.Type, Actor: capField(e.Actor), Session: capField(e.Session), Sandbox: capField(e.Sandbox), Tier: capField(e.Tier),
		Verdict: e.Verdict, Details: Redact(e.Details)}
	return ev, ts, nil
}

func capField(s string) string { return limits.Text(s, maxField) }

// stored is the exact bytes an event is stored (and hashed) as: its JSON without the chain fields.
func stored(ev api.AuditEvent) ([]byte, error) {
	ev.PrevHash, ev.Hash, ev.LogHost = "", "", ""
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("audit: encoding event: %w", err)
	}
	return b, nil
}

// chainHash is h_i = sha256(h_{i-1} || stored bytes).
func chainHash(prev, body []byte) []byte {
	h := sha256.New()
	h.Write(prev)
	h.Write(body)
	return h.Sum(nil)
}

// zeroHash is the chain's start.
var zeroHash = make([]byte, sha256.Size)

// maxBatch bounds one group commit.
const maxBatch = 512

// writer owns the writing connection: it commits queued events in batches, signs checkpoints and
// runs retention.
func (l *Log) writer() {
	defer close(l.done)
	tick := time.NewTicker(min(l.cfg.CheckpointInterval, l.cfg.RetentionInterval, time.Second*10) / 2)
	defer tick.Stop()
	lastRetention := l.cfg.Now()
	batch := make([]*pending, 0, maxBatch)
	for {
		select {
		case p := <-l.queue:
			batch = append(batch[:0], p)
		fill:
			for len(batch) < maxBatch {
				select {
				case p := <-l.queue:
					batch = append(batch, p)
				default:
					break fill
				}
			}
			l.commit(batch)
		case <-tick.C:
			if err := l.checkpointIfDue(false); err != nil {
				l.log.Warn("audit checkpoint failed", "err", err)
			}
			if now := l.cfg.Now(); now.Sub(lastRetention) >= l.cfg.RetentionInterval {
				lastRetention = now
				if err := l.retain(context.Background()); err != nil {
					l.log.Warn("audit retention failed", "err", err)
				}
			}
		case <-l.stop:
			for {
				select {
				case p := <-l.queue:
					l.commit([]*pending{p})
					continue
				default:
				}
				break
			}
			l.closeErr = l.checkpointIfDue(true)
			return
		}
	}
}

// head reads the chain's head (seq and hash of the last event, or the retention base).
func head(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (int64, []byte, error) {
	seq, h, _, err := headTS(ctx, q)
	return seq, h, err
}

// headTS is head with the last event's time (0 when there is none).
func headTS(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (int64, []byte, int64, error) {
	var seq, ts int64
	var h []byte
	err := q.QueryRowContext(ctx, `SELECT seq, hash, ts FROM events ORDER BY seq DESC LIMIT 1`).Scan(&seq, &h, &ts)
	if err == nil {
		return seq, h, ts, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return 0, nil, 0, fmt.Errorf("audit: reading the head: %w", err)
	}
	seq, h, err = base(ctx, q)
	return seq, h, 0, err
}

// base is where the chain starts: after the events retention deleted (0 and the zero hash when none).
func base(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (int64, []byte, error) {
	var seq int64
	err := q.QueryRowContext(ctx, `SELECT v FROM meta WHERE k='base_seq'`).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, zeroHash, nil
	}
	var h []byte
	if err == nil {
		err = q.QueryRowContext(ctx, `SELECT v FROM meta WHERE k='base_hash'`).Scan(&h)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("audit: reading the chain base: %w", err)
	}
	return seq, h, nil
}

// ftsText is what search's q matches: the event's names and every string in its details.
func ftsText(ev api.AuditEvent) string {
	var b strings.Builder
	for _, s := range []string{ev.Type, ev.Actor, ev.Session, ev.Sandbox, ev.Tier, ev.Verdict} {
		if s != "" {
			b.WriteString(s)
			b.WriteByte(' ')
		}
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			b.WriteString(v)
			b.WriteByte(' ')
		case map[string]any:
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(toGeneric(ev.Details))
	return b.String()
}

// detailString is a top-level string detail (indexed columns host and error_type).
func detailString(d map[string]any, k string) string {
	s, _ := d[k].(string)
	return capField(s)
}

// commit writes a batch in one transaction and answers each event's Record.
func (l *Log) commit(batch []*pending) {
	err := l.commitTx(batch)
	if err == nil {
		for _, p := range batch {
			for _, s := range l.cfg.Sinks {
				if serr := s.Write(p.ev); serr != nil {
					l.log.Warn("audit sink failed", "sink", s.Name(), "err", serr)
				}
			}
		}
	}
	for _, p := range batch {
		p.done <- err
	}
}

func (l *Log) commitTx(batch []*pending) error {
	ctx := context.Background()
	tx, err := l.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("audit: beginning a transaction: %w", err)
	}
	defer tx.Rollback()
	// The head is read inside the (immediate) transaction, so that whatever else wrote the file,
	// the chain continues from what is really there.
	seq, prev, lastTS, err := headTS(ctx, tx)
	if err != nil {
		return err
	}
	ins, fts := tx.StmtContext(ctx, l.insEvent), tx.StmtContext(ctx, l.insFTS)
	for _, p := range batch {
		seq++
		p.ev.Seq = seq
		// Times never go back along the chain, so that a time range is a range of seq (search
		// and reports seek by seq): an event given an earlier time than the one before it is
		// recorded at that one's time.
		if ts := p.ts.UnixNano(); ts < lastTS {
			p.ts = time.Unix(0, lastTS).UTC()
			p.ev.Time = p.ts.Format(time.RFC3339Nano)
		}
		lastTS = p.ts.UnixNano()
		body, err := stored(p.ev)
		if err != nil {
			return err
		}
		h := chainHash(prev, body)
		if _, err := ins.ExecContext(ctx, seq, p.ts.UnixNano(), p.ev.Type, p.ev.Actor, p.ev.Session, p.ev.Sandbox, p.ev.Tier, p.ev.Verdict,
			detailString(p.ev.Details, "host"), detailString(p.ev.Details, "error_type"), string(body), prev, h); err != nil {
			return fmt.Errorf("audit: writing event %d: %w", seq, err)
		}
		if _, err := fts.ExecContext(ctx, seq, ftsText(p.ev)); err != nil {
			return fmt.Errorf("audit: indexing event %d: %w", seq, err)
		}
		p.ev.PrevHash, p.ev.Hash = hex.EncodeToString(prev), hex.EncodeToString(h)
		prev = h
	}
	last, err := lastCheckpoint(ctx, tx)
	if err != nil {
		return err
	}
	if seq-last.seq >= int64(l.cfg.CheckpointEvery) {
		if err := l.sign(ctx, tx, seq, prev); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("audit: committing: %w", err)
	}
	return nil
}

type checkpointRow struct {
	seq  int64
	head []byte
	ts   int64
}

func lastCheckpoint(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (checkpointRow, error) {
	var c checkpointRow
	err := q.QueryRowContext(ctx, `SELECT seq, head, ts FROM checkpoints ORDER BY seq DESC LIMIT 1`).Scan(&c.seq, &c.head, &c.ts)
	if errors.Is(err, sql.ErrNoRows) {
		return checkpointRow{}, nil
	}
	if err != nil {
		return c, fmt.Errorf("audit: reading the last checkpoint: %w", err)
	}
	return c, nil
}

func (l *Log) sign(ctx context.Context, tx *sql.Tx, seq int64, h []byte) error {
	ts := l.cfg.Now().UTC().UnixNano()
	sig := ed25519.Sign(l.key, checkpointMessage(seq, h, ts))
	if _, err := tx.ExecContext(ctx, `INSERT INTO checkpoints(seq, head, ts, key_id, sig) VALUES(?,?,?,?,?)`, seq, h, ts, l.keyID, sig); err != nil {
		return fmt.Errorf("audit: writing the checkpoint at %d: %w", seq, err)
	}
	return nil
}

// checkpointIfDue signs the head when events wait for a checkpoint longer than the interval (or, at
// close, at all).
func (l *Log) checkpointIfDue(force bool) error {
	ctx := context.Background()
	tx, err := l.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer tx.Rollback()
	seq, h, err := head(ctx, tx)
	if err != nil {
		return err
	}
	last, err := lastCheckpoint(ctx, tx)
	if err != nil {
		return err
	}
	if seq == 0 || seq <= last.seq {
		return nil
	}
	if !force {
		// The oldest event not covered decides.
		var ts int64
		if err := tx.QueryRowContext(ctx, `SELECT ts FROM events WHERE seq > ? ORDER BY seq LIMIT 1`, last.seq).Scan(&ts); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		if l.cfg.Now().Sub(time.Unix(0, ts)) < l.cfg.CheckpointInterval {
			return nil
		}
	}
	if err := l.sign(ctx, tx, seq, h); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("audit: committing the checkpoint: %w", err)
	}
	return nil
}

// Checkpoint signs the current head now (tests, and `agentbox audit verify` after a final write).
func (l *Log) Checkpoint(ctx context.Context) error {
	if l.queue == nil {
		return errdefs.With(errdefs.Unavailable, errors.New("the audit log is open read-only"))
	}
	// Through the writer's queue would need a second message kind; the transaction is immediate, so
	// a concurrent commit waits on SQLite's lock (busy_timeout) and chains after it.
	return l.checkpointIfDue(true)
}

// Close writes what is queued, signs a final checkpoint and closes the database. Records after Close
// fail with ErrClosed.
func (l *Log) Close() error {
	if l.queue == nil {
		return l.r.Close()
	}
	l.closeOnce.Do(func() { close(l.stop) })
	<-l.done
	return errors.Join(l.closeErr, l.w.Close(), l.r.Close())
}

// Path is the database file.
func (l *Log) Path() string { return l.cfg.Path }

// closer is what sinks may hold.
var _ io.Closer = (*Log)(nil)
