package audit

import (
	"context"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/entersandbox/agentbox/api"
)

// retain deletes events older than MaxAge and the oldest beyond MaxBytes, moves the chain's base past
// them, and records what it deleted as an audit.retention event, all in one transaction.
func (l *Log) retain(ctx context.Context) error {
	if l.cfg.MaxAge <= 0 && l.cfg.MaxBytes <= 0 {
		return nil
	}
	now := l.cfg.Now()
	tx, err := l.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("audit: retention: %w", err)
	}
	defer tx.Rollback()
	headSeq, _, err := head(ctx, tx)
	if err != nil {
		return err
	}
	baseSeq, _, err := base(ctx, tx)
	if err != nil {
		return err
	}
	cut := baseSeq // delete events with seq <= cut
	reason := ""
	if l.cfg.MaxAge > 0 {
		var s int64
		err := tx.QueryRowContext(ctx, `SELECT coalesce((SELECT seq FROM events WHERE ts < ? ORDER BY ts DESC LIMIT 1), 0)`, now.Add(-l.cfg.MaxAge).UnixNano()).Scan(&s)
		if err != nil {
			return fmt.Errorf("audit: retention: %w", err)
		}
		if s > cut {
			cut, reason = s, fmt.Sprintf("older than %s", l.cfg.MaxAge)
		}
	}
	if l.cfg.MaxBytes > 0 {
		var pages, free, size int64
		tx.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages)
		tx.QueryRowContext(ctx, `PRAGMA freelist_count`).Scan(&free)
		tx.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&size)
		used := (pages - free) * size
		if n := headSeq - cut; used > l.cfg.MaxBytes && n > 0 {
			// Events are about the same size: delete the share that is over, and a tenth more so
			// that this does not run on every tick.
			per := used / max(headSeq-baseSeq, 1)
			over := (used-l.cfg.MaxBytes)/max(per, 1) + (headSeq-baseSeq)/10 + 1
			if s := min(cut+over, headSeq); s > cut {
				cut, reason = s, fmt.Sprintf("the database was over %d bytes", l.cfg.MaxBytes)
			}
		}
	}
	if cut <= baseSeq || cut > headSeq {
		return nil
	}
	var cutHash []byte
	var cutTS int64
	if err := tx.QueryRowContext(ctx, `SELECT hash, ts FROM events WHERE seq = ?`, cut).Scan(&cutHash, &cutTS); err != nil {
		return fmt.Errorf("audit: retention: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM events_fts WHERE rowid > ? AND rowid <= ?`, baseSeq, cut); err != nil {
		return fmt.Errorf("audit: retention: %w", err)
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE seq > ? AND seq <= ?`, baseSeq, cut)
	if err != nil {
		return fmt.Errorf("audit: retention: %w", err)
	}
	deleted, _ := res.RowsAffected()
	if _, err := tx.ExecContext(ctx, `INSERT INTO meta(k, v) VALUES('base_seq', ?), ('base_hash', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`, cut, cutHash); err != nil {
		return fmt.Errorf("audit: retention: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("audit: retention: %w", err)
	}
	l.log.Info("audit retention", "deleted", deleted, "through_seq", cut, "reason", reason)
	// Recorded after the deletion commits (in the writer, or before it starts): the event chains on
	// the deleted range's last hash, which it names, so that the new base is itself in the chain.
	ev, ts, err := l.prepare(Event{Type: TypeRetention, Actor: ActorSystem, Details: map[string]any{
		"deleted": deleted, "through_seq": cut, "through_hash": hex.EncodeToString(cutHash),
		"through_time": time.Unix(0, cutTS).UTC().Format(time.RFC3339Nano), "reason": reason,
		"max_age_s": int64(l.cfg.MaxAge / time.Second), "max_bytes": l.cfg.MaxBytes}})
	if err != nil {
		return err
	}
	p := &pending{ev: ev, ts: ts, done: make(chan error, 1)}
	l.commit([]*pending{p})
	return <-p.done
}

// eventFromRow rebuilds the API form of a stored event.
func eventFromRow(body string, prev, h []byte) (api.AuditEvent, error) {
	var ev api.AuditEvent
	if err := jsonUnmarshalString(body, &ev); err != nil {
		return ev, fmt.Errorf("audit: stored event: %w", err)
	}
	ev.PrevHash, ev.Hash = hex.EncodeToString(prev), hex.EncodeToString(h)
	return ev, nil
}
