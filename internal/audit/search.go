package audit

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// Query selects events. Zero fields select everything.
type Query struct {
	Since, Until time.Time // Until excluded
	// Type is an event type, or a prefix of types before a dot: "egress" selects egress.request and
	// egress.dlp.
	Type    string
	Session string
	Verdict string
	Actor   string
	// Text is full-text search over hosts, paths, messages and every other string of the event:
	// words and "quoted phrases", all of which must match; a word ending in * matches as a prefix.
	Text string
	// Cursor continues a search where the previous page ended (AuditEventList.NextCursor).
	Cursor string
	// Limit is the page size; zero means 100, at most 1000.
	Limit int
}

// Caps on search input.
const (
	maxQueryText  = 1024
	maxQueryTerms = 16
	maxPage       = 1000
)

func invalid(format string, args ...any) error {
	return errdefs.With(errdefs.InvalidArgument, fmt.Errorf(format, args...))
}

// ParseQuery reads a search from URL parameters (since, until, type, session, verdict, actor, q,
// cursor, limit); times are RFC 3339, a date (2006-01-02, UTC) or a duration back from now (24h, 7d).
func ParseQuery(v url.Values, now time.Time) (Query, error) {
	var q Query
	for k := range v {
		switch k {
		case "since", "until", "type", "session", "verdict", "actor", "q", "cursor", "limit":
		default:
			return q, invalid("unknown search parameter %q (want since, until, type, session, verdict, actor, q, cursor, limit)", limits.Text(k, 64))
		}
		if len(v[k]) > 1 {
			return q, invalid("search parameter %q is given %d times: give it once", k, len(v[k]))
		}
	}
	var err error
	if q.Since, err = ParseTime(v.Get("since"), now); err != nil {
		return q, invalid("since: %w", err)
	}
	if q.Until, err = ParseTime(v.Get("until"), now); err != nil {
		return q, invalid("until: %w", err)
	}
	q.Type, q.Session, q.Verdict, q.Actor, q.Text, q.Cursor = v.Get("type"), v.Get("session"), v.Get("verdict"), v.Get("actor"), v.Get("q"), v.Get("cursor")
	if s := v.Get("limit"); s != "" {
		if q.Limit, err = strconv.Atoi(s); err != nil || q.Limit < 1 || q.Limit > maxPage {
			return q, invalid("limit %q: want 1 to %d", limits.Text(s, 32), maxPage)
		}
	}
	return q, q.check()
}

// ParseTime reads RFC 3339, a date (UTC midnight) or a duration back from now ("90m", "24h", "7d");
// empty is the zero time.
func ParseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := parseTime(s, now)
	if err == nil && (t.Year() < 1970 || t.Year() > 2200) {
		return time.Time{}, fmt.Errorf("%q is outside 1970 to 2200", limits.Text(s, 64))
	}
	return t, err
}

func parseTime(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if days, err := strconv.Atoi(n); err == nil && days >= 0 && days <= 36500 {
			return now.Add(-time.Duration(days) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time: want RFC 3339 (2026-12-01T10:00:00Z), a date (2026-12-01) or a duration back from now (90m, 24h, 7d)", limits.Text(s, 64))
}

func (q *Query) check() error {
	if q.Type != "" && !validType(q.Type) {
		return invalid("type %q: want one of %s, or a prefix of them such as egress", limits.Text(q.Type, 64), strings.Join(Types, ", "))
	}
	if q.Verdict != "" && !knownVerdict[q.Verdict] {
		return invalid("verdict %q: want one of %s", limits.Text(q.Verdict, 64), strings.Join(Verdicts, ", "))
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Until.After(q.Since) {
		return invalid("until must be after since")
	}
	if len(q.Session) > maxField || len(q.Actor) > maxField {
		return invalid("session and actor are at most %d bytes", maxField)
	}
	if _, err := ParseText(q.Text); err != nil {
		return err
	}
	if _, err := decodeCursor(q.Cursor); err != nil {
		return err
	}
	return nil
}

func validType(t string) bool {
	for _, k := range Types {
		if k == t || strings.HasPrefix(k, t+".") {
			return true
		}
	}
	return false
}

// ParseText turns a q into an FTS5 expression in which every user word is a quoted string, so that
// nothing a user types is FTS5 syntax (AND, NEAR, column filters, parentheses): words and "phrases"
// all must match, a trailing * makes a prefix. Empty q is an empty expression.
func ParseText(s string) (string, error) {
	if len(s) > maxQueryText {
		return "", invalid("q is %d bytes: at most %d", len(s), maxQueryText)
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return "", invalid("q has a control character")
	}
	var terms []string
	rest := s
	for {
		rest = strings.TrimLeftFunc(rest, unicode.IsSpace)
		if rest == "" {
			break
		}
		var term string
		if rest[0] == '"' {
			end := strings.IndexByte(rest[1:], '"')
			if end < 0 {
				return "", invalid("q: a \" is not closed")
			}
			term, rest = rest[1:1+end], rest[2+end:]
		} else {
			end := strings.IndexFunc(rest, unicode.IsSpace)
			if end < 0 {
				end = len(rest)
			}
			term, rest = rest[:end], rest[end:]
		}
		prefix := false
		if t, ok := strings.CutSuffix(term, "*"); ok {
			term, prefix = strings.TrimRight(t, "*"), true
		}
		if !strings.ContainsFunc(term, func(r rune) bool { return unicode.IsLetter(r) || unicode.IsNumber(r) }) {
			continue // only punctuation: FTS5 would index nothing of it
		}
		if !utf8Valid(term) {
			return "", invalid("q is not valid UTF-8")
		}
		if len(terms) == maxQueryTerms {
			return "", invalid("q has more than %d words", maxQueryTerms)
		}
		quoted := `"` + strings.ReplaceAll(term, `"`, `""`) + `"`
		if prefix {
			quoted += "*"
		}
		terms = append(terms, quoted)
	}
	return strings.Join(terms, " AND "), nil
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// CursorBelow is the cursor of the page that starts below event seq: what a fleet gives one host
// to go on after the last of its events it showed.
func CursorBelow(seq int64) string { return encodeCursor(seq) }

// Cursors are opaque to clients: the seq the next page starts below.
func encodeCursor(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("v1:" + strconv.FormatInt(seq, 10)))
}

func decodeCursor(c string) (int64, error) {
	if c == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		if s, ok := strings.CutPrefix(string(b), "v1:"); ok {
			if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 {
				return n, nil
			}
		}
	}
	return 0, invalid("cursor %q is not one this server gave (use next_cursor of the previous page)", limits.Text(c, 64))
}

// Search returns the events q selects, newest first, a page at a time.
func (l *Log) Search(ctx context.Context, q Query) (api.AuditEventList, error) {
	if err := q.check(); err != nil {
		return api.AuditEventList{}, err
	}
	if q.Limit <= 0 {
		q.Limit = 100
	}
	q.Limit = min(q.Limit, maxPage)
	match, _ := ParseText(q.Text)
	below, _ := decodeCursor(q.Cursor)
	var where []string
	var args []any
	add := func(cond string, a ...any) {
		where = append(where, cond)
		args = append(args, a...)
	}
	col := "e."
	from := "events e"
	if match != "" {
		// FTS5 walks its matches by rowid, newest first, and stops at the limit. CROSS JOIN keeps
		// it the outer loop: with the match inside (say under verdict's index) SQLite would run the
		// full-text query again for every candidate row, seconds over a million events.
		from = "events_fts f CROSS JOIN events e ON e.seq = f.rowid"
		add("events_fts MATCH ?", match)
		col = "f."
	}
	lo, hi, err := l.seqRange(ctx, q.Since, q.Until)
	if err != nil {
		return api.AuditEventList{}, err
	}
	if below > 0 && (hi == 0 || below < hi) {
		hi = below
	}
	if hi == 0 {
		hi = 1<<63 - 1
	}
	add(col+"rowid >= ? AND "+col+"rowid < ?", lo, hi)
	if q.Type != "" {
		if knownType[q.Type] {
			add("e.type = ?", q.Type)
		} else {
			add("e.type >= ? AND e.type < ?", q.Type+".", q.Type+"/")
		}
	}
	if q.Session != "" {
		add("e.session = ?", q.Session)
	}
	if q.Verdict != "" {
		add("e.verdict = ?", q.Verdict)
	}
	if q.Actor != "" {
		add("e.actor = ?", q.Actor)
	}
	stmt := "SELECT e.seq, e.body, e.prev_hash, e.hash FROM " + from
	if len(where) > 0 {
		stmt += " WHERE " + strings.Join(where, " AND ")
	}
	stmt += " ORDER BY " + col + "rowid DESC LIMIT ?"
	args = append(args, q.Limit+1)
	rows, err := l.r.QueryContext(ctx, stmt, args...)
	if err != nil {
		return api.AuditEventList{}, fmt.Errorf("audit: searching: %w", err)
	}
	defer rows.Close()
	out := api.AuditEventList{Events: []api.AuditEvent{}}
	for rows.Next() {
		var seq int64
		var body string
		var prev, h []byte
		if err := rows.Scan(&seq, &body, &prev, &h); err != nil {
			return out, fmt.Errorf("audit: searching: %w", err)
		}
		if len(out.Events) == q.Limit {
			out.NextCursor = encodeCursor(out.Events[len(out.Events)-1].Seq)
			break
		}
		ev, err := eventFromRow(body, prev, h)
		if err != nil {
			return out, err
		}
		out.Events = append(out.Events, ev)
	}
	if err := rows.Err(); err != nil {
		return out, fmt.Errorf("audit: searching: %w", err)
	}
	return out, nil
}

// seqRange turns a time range into the range of seq holding it, [lo, hi) with hi 0 meaning no end:
// times do not go back along the chain (the writer sees to it), so each bound is one index seek.
func (l *Log) seqRange(ctx context.Context, since, until time.Time) (int64, int64, error) {
	var lo, hi int64
	seek := func(t time.Time) (int64, error) {
		var seq int64
		err := l.r.QueryRowContext(ctx, `SELECT seq FROM events WHERE ts >= ? ORDER BY ts LIMIT 1`, t.UnixNano()).Scan(&seq)
		if errors.Is(err, sql.ErrNoRows) {
			return 1<<63 - 1, nil // after the last event
		}
		if err != nil {
			return 0, fmt.Errorf("audit: %w", err)
		}
		return seq, nil
	}
	var err error
	if !since.IsZero() {
		if lo, err = seek(since); err != nil {
			return 0, 0, err
		}
	}
	if !until.IsZero() {
		if hi, err = seek(until); err != nil {
			return 0, 0, err
		}
	}
	return lo, hi, nil
}

func jsonUnmarshalString(s string, v any) error {
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return errors.New("not JSON: " + err.Error())
	}
	return nil
}
