package audit

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
)

// Periods of reports.
const (
	Daily  = "daily"
	Weekly = "weekly"
)

// PeriodBounds is the UTC day of date, or its ISO week (Monday to Monday).
func PeriodBounds(period string, date time.Time) (time.Time, time.Time, error) {
	d := time.Date(date.Year(), date.Month(), date.Day(), 0, 0, 0, 0, time.UTC)
	switch period {
	case Daily:
		return d, d.AddDate(0, 0, 1), nil
	case Weekly:
		back := (int(d.Weekday()) + 6) % 7 // days since Monday
		start := d.AddDate(0, 0, -back)
		return start, start.AddDate(0, 0, 7), nil
	}
	return time.Time{}, time.Time{}, invalid("report period %q: want daily or weekly", period)
}

// topN bounds the lists of a report.
const topN = 20

// Report builds the report of the period containing date.
func (l *Log) Report(ctx context.Context, period string, date time.Time) (api.AuditReport, error) {
	start, end, err := PeriodBounds(period, date)
	if err != nil {
		return api.AuditReport{}, err
	}
	rep := api.AuditReport{Period: period, Start: start.Format(time.RFC3339), End: end.Format(time.RFC3339),
		GeneratedAt: l.cfg.Now().UTC().Format(time.RFC3339Nano), NewHosts: []string{}, PolicyChanges: []api.AuditEvent{}}
	fail := func(what string, err error) (api.AuditReport, error) {
		return rep, fmt.Errorf("audit: report %s: %w", what, err)
	}
	// Every query below is over the period's range of seq (times do not go back along the chain).
	lo, hi, err := l.seqRange(ctx, start, end)
	if err != nil {
		return rep, err
	}
	if hi == 0 {
		hi = 1<<63 - 1
	}
	t0 := start.UnixNano()

	// The chain's verification runs alongside the rest (it reads every event of the period too).
	var vres api.AuditVerification
	var verr error
	var verifying sync.WaitGroup
	verifying.Go(func() { vres, verr = l.verifyPeriod(ctx, start, hi) })
	defer verifying.Wait() // never leave it reading after an early return

	// One pass over the period for the totals, sessions and hours, counted here: GROUP BY on
	// columns without an index would make SQLite sort the whole period once per total.
	hours := int(end.Sub(start) / time.Hour)
	rep.EventsPerHour, rep.BlockedPerHour = make([]int64, hours), make([]int64, hours)
	rows, err := l.r.QueryContext(ctx, `SELECT type, verdict, tier, actor, session, ts FROM events WHERE seq >= ? AND seq < ?`, lo, hi)
	if err != nil {
		return fail("totals", err)
	}
	byType, byVerdict, byTier, byActor, bySession := map[string]int64{}, map[string]int64{}, map[string]int64{}, map[string]int64{}, map[string]int64{}
	var typ, verdict, tier, actor, session string
	var ts int64
	for rows.Next() {
		if err := rows.Scan(&typ, &verdict, &tier, &actor, &session, &ts); err != nil {
			rows.Close()
			return fail("totals", err)
		}
		rep.Events++
		byType[typ]++
		byVerdict[verdict]++
		if tier != "" {
			byTier[tier]++
		}
		byActor[actor]++
		if session != "" {
			bySession[session]++
		}
		if typ == TypeAuthFailure {
			rep.AuthFailures++
		}
		if h := int((ts - t0) / int64(time.Hour)); h >= 0 && h < hours {
			rep.EventsPerHour[h]++
			if verdict == VerdictBlock {
				rep.BlockedPerHour[h]++
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fail("totals", err)
	}
	rep.ByType, rep.ByVerdict, rep.ByTier, rep.ByActor, rep.BySession = Counts(byType, 0), Counts(byVerdict, 0), Counts(byTier, 0), Counts(byActor, topN), Counts(bySession, topN)

	counts := func(what, stmt string, args ...any) ([]api.AuditCount, error) {
		rows, err := l.r.QueryContext(ctx, stmt, args...)
		if err != nil {
			return nil, fmt.Errorf("audit: report %s: %w", what, err)
		}
		defer rows.Close()
		out := []api.AuditCount{}
		for rows.Next() {
			var c api.AuditCount
			var key sql.NullString
			if err := rows.Scan(&key, &c.Count); err != nil {
				return nil, fmt.Errorf("audit: report %s: %w", what, err)
			}
			c.Key = key.String
			out = append(out, c)
		}
		return out, rows.Err()
	}
	if rep.TopBlocked, err = counts("blocked", `SELECT host, count(*) FROM events WHERE type = ? AND verdict = ? AND seq >= ? AND seq < ? GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?`,
		TypeEgressRequest, VerdictBlock, lo, hi, topN); err != nil {
		return rep, err
	}
	if rep.Errors, err = counts("errors", `SELECT errtype, count(*) FROM events WHERE type = ? AND errtype <> '' AND seq >= ? AND seq < ? GROUP BY 1 ORDER BY 2 DESC, 1`,
		TypeRun, lo, hi); err != nil {
		return rep, err
	}
	if rep.DLPFindings, err = counts("dlp", `SELECT json_extract(j.value, '$.type'), sum(coalesce(json_extract(j.value, '$.count'), 1))
		FROM events e, json_each(e.body, '$.details.detectors') j
		WHERE e.type IN (?, ?) AND e.seq >= ? AND e.seq < ? GROUP BY 1 ORDER BY 2 DESC, 1`, TypeEgressDLP, TypeMCPCall, lo, hi); err != nil {
		return rep, err
	}

	// Hosts of the period with no egress event before it.
	hosts, err := counts("hosts", `SELECT host, count(*) FROM events WHERE type = ? AND host <> '' AND seq >= ? AND seq < ? GROUP BY 1 ORDER BY 1`, TypeEgressRequest, lo, hi)
	if err != nil {
		return rep, err
	}
	for _, h := range hosts {
		var one int
		err := l.r.QueryRowContext(ctx, `SELECT 1 FROM events WHERE host = ? AND seq < ? AND type = ? LIMIT 1`, h.Key, lo, TypeEgressRequest).Scan(&one)
		if err == sql.ErrNoRows {
			rep.NewHosts = append(rep.NewHosts, h.Key)
		} else if err != nil {
			return fail("hosts", err)
		}
	}

	pol, err := l.Search(ctx, Query{Type: TypePolicyChange, Since: start, Until: end, Limit: maxPage})
	if err != nil {
		return rep, err
	}
	rep.PolicyChanges = pol.Events

	verifying.Wait()
	if verr != nil {
		return rep, verr
	}
	rep.Verification = vres
	return rep, nil
}

// verifyPeriod checks the chain through the last event before hi (a seq), from the last signed
// checkpoint before start (or the base), which the checkpoint's signature vouches for.
func (l *Log) verifyPeriod(ctx context.Context, start time.Time, hi int64) (api.AuditVerification, error) {
	pub := l.PublicKey()
	if pub == nil {
		return api.AuditVerification{Problem: "not verified: the log is open without its key"}, nil
	}
	fromSeq, fromHash, err := l.checkpointBefore(ctx, start)
	if err != nil {
		return api.AuditVerification{}, err
	}
	var toSeq int64
	if err := l.r.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM events WHERE seq < ?`, hi).Scan(&toSeq); err != nil {
		return api.AuditVerification{}, fmt.Errorf("audit: report verification: %w", err)
	}
	if toSeq <= fromSeq {
		return api.AuditVerification{OK: true, FirstSeq: fromSeq + 1, LastSeq: fromSeq}, nil
	}
	return l.verifyRange(ctx, pub, fromSeq, fromHash, toSeq)
}

// Counts is a report's count list of m: largest first, then by key; at most limit (0: all).
func Counts(m map[string]int64, limit int) []api.AuditCount {
	out := make([]api.AuditCount, 0, len(m))
	for k, n := range m {
		out = append(out, api.AuditCount{Key: k, Count: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Key < out[j].Key
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}
