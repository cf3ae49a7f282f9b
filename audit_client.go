package agentbox

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// AuditQuery selects audit events (GET /v1/audit/events). Zero fields select everything.
type AuditQuery struct {
	// Since and Until bound the events' time (Until excluded); SinceAgo, when set, is Since as a
	// duration back from the server's now (sent as e.g. "24h").
	Since, Until time.Time
	SinceAgo     time.Duration
	// Type is an event type or a prefix of types ("egress" is egress.request and egress.dlp).
	Type    string
	Session string
	Verdict string
	Actor   string
	// Q is full-text search over hosts, paths and messages: words and "phrases" must all match,
	// word* is a prefix.
	Q string
	// Cursor continues after a previous page (AuditEventList.NextCursor); Limit is the page size
	// (zero: the server's 100).
	Cursor string
	Limit  int
}

func (q AuditQuery) values() url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	if !q.Since.IsZero() {
		set("since", q.Since.UTC().Format(time.RFC3339Nano))
	} else if q.SinceAgo > 0 {
		set("since", q.SinceAgo.String())
	}
	if !q.Until.IsZero() {
		set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	set("type", q.Type)
	set("session", q.Session)
	set("verdict", q.Verdict)
	set("actor", q.Actor)
	set("q", q.Q)
	set("cursor", q.Cursor)
	if q.Limit > 0 {
		set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

// AuditEvents returns a page of audit events, newest first. It needs a key with the audit scope.
func (c *Client) AuditEvents(ctx context.Context, q AuditQuery) (*AuditEventList, error) {
	path := "/v1/audit/events"
	if v := q.values(); len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out AuditEventList
	if err := c.doJSON(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AllAuditEvents calls fn with every event q selects, page after page, until fn returns false or
// the last page.
func (c *Client) AllAuditEvents(ctx context.Context, q AuditQuery, fn func(AuditEvent) bool) error {
	for {
		page, err := c.AuditEvents(ctx, q)
		if err != nil {
			return err
		}
		for _, e := range page.Events {
			if !fn(e) {
				return nil
			}
		}
		if page.NextCursor == "" {
			return nil
		}
		q.Cursor = page.NextCursor
	}
}

func reportPath(period string, date time.Time, format string) string {
	v := url.Values{}
	if !date.IsZero() {
		v.Set("date", date.UTC().Format(time.DateOnly))
	}
	if format != "" {
		v.Set("format", format)
	}
	p := "/v1/audit/reports/" + url.PathEscape(period)
	if len(v) > 0 {
		p += "?" + v.Encode()
	}
	return p
}

// AuditReport returns the daily or weekly report (period "daily" or "weekly") of the period
// containing date (zero: today, UTC).
func (c *Client) AuditReport(ctx context.Context, period string, date time.Time) (*AuditReport, error) {
	var out AuditReport
	if err := c.doJSON(ctx, http.MethodGet, reportPath(period, date, "json"), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AuditReportDocument returns a report rendered as format "md" (Markdown) or "html" (a
// self-contained page with charts).
func (c *Client) AuditReportDocument(ctx context.Context, period string, date time.Time, format string) ([]byte, error) {
	resp, err := c.do(ctx, http.MethodGet, reportPath(period, date, format), nil, "", "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("agentbox: reading the report: %w", err)
	}
	return b, nil
}

// AuditVerify asks the server to check the audit log's chain and signed checkpoints. A broken
// chain is not an error: the answer's OK is false and BadSeq names the first bad event.
func (c *Client) AuditVerify(ctx context.Context) (*AuditVerification, error) {
	var out AuditVerification
	if err := c.doJSON(ctx, http.MethodGet, "/v1/audit/verify", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AuditVerifyHost is AuditVerify of one host of a fleet (docs/cluster.md): each host's audit log
// has its own chain, and the host answering (any of the fleet's) checks host's. A single server, or
// a host not in the fleet, is ErrNotFound.
func (c *Client) AuditVerifyHost(ctx context.Context, host string) (*AuditVerification, error) {
	var out AuditVerification
	if err := c.doJSON(ctx, http.MethodGet, "/v1/audit/verify?"+url.Values{"host": {host}}.Encode(), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
