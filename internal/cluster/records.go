package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// recordTimeout bounds the forgetting of one session record.
const recordTimeout = 5 * time.Second

// SessionEnded forgets the fleet's record of session id, which ended on this host (its client
// closed it, it idled past its TTL, its sandbox died): wire it to dispatch.Config.SessionClosed. It
// does not block; the record is deleted in the background, and only while it still names this host
// (a session restored on another host keeps its new record).
func (n *Node) SessionEnded(id string) {
	n.mu.Lock()
	delete(n.owners, id)
	n.mu.Unlock()
	if !keyRE.MatchString(id) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
		defer cancel()
		if err := n.forgetRecord(ctx, id); err != nil {
			n.log.Warn("cluster: forgetting an ended session's record", "session", id, "err", err)
		}
	}()
}

// forgetRecord deletes session id's record if it names this host, at the revision read (so a record
// rewritten meanwhile is kept: a host taken for dead whose session another host restored must not
// delete the record that now names the other). A DELETE's answer and the dispatcher's close hook
// both forget a deleted session; the one that loses the race finds the record gone, which is done.
func (n *Node) forgetRecord(ctx context.Context, id string) error {
	var tried uint64
	for attempt := range 10 {
		e, err := n.getLeader(ctx, SessionsBucket, id) // compared and deleted: the latest revision
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading: %w", err)
		}
		var rec sessionRecord
		if json.Unmarshal(e.Value(), &rec) == nil && rec.Host != n.cfg.HostID {
			return nil
		}
		if e.Revision() == tried {
			// The write that beat the last try is proposed but not applied yet: the leader refuses
			// a revision before it has the one that replaces it.
			select {
			case <-ctx.Done():
				return fmt.Errorf("deleting: %w", ctx.Err())
			case <-time.After(time.Duration(attempt) * 10 * time.Millisecond):
			}
			continue
		}
		tried = e.Revision()
		err = n.sess.Delete(ctx, id, jetstream.LastRevision(tried))
		if err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		var api *jetstream.APIError
		if !errors.As(err, &api) || (api.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence && api.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return fmt.Errorf("deleting: %w", err)
		}
		// Written or deleted since it was read: read it again.
	}
	return fmt.Errorf("deleting: the record of %s kept changing", id)
}

// SweepSessionRecords deletes the records that name this host for sessions (and MCP connections)
// has says it does not have: those of a previous run of this host id (a crash, a restart), which
// ended with it. Call it once the host has joined, before it serves; it reads the bucket once
// (a watcher delivers its current values) and deletes each stale record at the revision it read,
// so a record written meanwhile is kept. It returns how many it deleted.
func (n *Node) SweepSessionRecords(ctx context.Context, has func(id string) bool) (int, error) {
	w, err := n.sess.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return 0, fmt.Errorf("cluster: sweeping session records: %w", err)
	}
	defer w.Stop()
	var stale []jetstream.KeyValueEntry
	for {
		var e jetstream.KeyValueEntry
		select {
		case e = <-w.Updates():
		case <-ctx.Done():
			return 0, fmt.Errorf("cluster: sweeping session records: %w", ctx.Err())
		}
		if e == nil {
			break // the current values are all delivered
		}
		var rec sessionRecord
		if json.Unmarshal(e.Value(), &rec) != nil || rec.Host != n.cfg.HostID || has(e.Key()) {
			continue
		}
		stale = append(stale, e)
	}
	swept := 0
	for _, e := range stale {
		if err := n.sess.Delete(ctx, e.Key(), jetstream.LastRevision(e.Revision())); err != nil {
			if ctx.Err() != nil {
				return swept, fmt.Errorf("cluster: sweeping session records: %w", err)
			}
			n.log.Warn("cluster: sweeping a stale session record", "session", e.Key(), "err", err)
			continue
		}
		swept++
	}
	return swept, nil
}
