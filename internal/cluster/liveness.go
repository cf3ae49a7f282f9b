package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/entersandbox/agentbox/api"
)

// pingSubject (agentbox.host.<id>.ping) is answered by host id with its current record, straight
// from its NATS connection: no JetStream, no heartbeat loop, so a host whose replicated heartbeats
// are late (a loaded box, a GC pause, a slow raft commit) still answers it.
const pingSuffix = ".ping"

// probeTimeout bounds the ping that confirms a host is gone. A killed host answers at once (no
// responders: its subscriptions went with its connection); only a partitioned or frozen host
// makes a probe wait this long, and then once per record it missed (seenHost.probed).
func (n *Node) probeTimeout() time.Duration {
	return max(2*n.cfg.Heartbeat, time.Second)
}

func (n *Node) onPing(m *nats.Msg) {
	b, _ := json.Marshal(n.record())
	m.Respond(b)
}

// liveHost returns host id when it is in the fleet. A host whose record is older than HostTTL is
// asked directly before it is taken for gone: its record ages when its heartbeats are only slow,
// and taking it for dead would answer 404 for (or restore elsewhere) sessions it still serves.
// A host that answers is live again with the record it answered; one that does not is not asked
// again until a newer record of it arrives.
func (n *Node) liveHost(ctx context.Context, id string) (api.Host, bool) {
	if h, ok := n.liveHosts()[id]; ok {
		return h, true
	}
	n.mu.Lock()
	s, known := n.seen[id]
	n.mu.Unlock()
	if !known || !s.left.IsZero() || !s.probed.IsZero() || id == n.cfg.HostID {
		return api.Host{}, false // never seen, left cleanly, or already found gone since its last record
	}
	pctx, cancel := context.WithTimeout(ctx, n.probeTimeout())
	defer cancel()
	msg, err := n.nc.RequestWithContext(pctx, controlSubject+"."+id+pingSuffix, nil)
	var h api.Host
	if err == nil {
		err = json.Unmarshal(msg.Data, &h)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	cur := n.seen[id]
	if !cur.at.Equal(s.at) || !cur.left.IsZero() {
		// A record or a leave arrived meanwhile: it says more than this probe.
		return cur.host, cur.left.IsZero() && time.Since(cur.at) < n.cfg.HostTTL
	}
	if err != nil || h.ID != id {
		if ctx.Err() == nil { // the asker leaving says nothing about the host
			cur.probed = time.Now()
			n.seen[id] = cur
			n.log.Warn("cluster: a host's record expired and it does not answer: taken for gone", "peer", id, "last_record", s.at.UTC().Format(time.RFC3339Nano), "err", err)
		}
		return api.Host{}, false
	}
	n.log.Warn("cluster: a host's record expired but it answers: its heartbeats are late", "peer", id, "last_record", s.at.UTC().Format(time.RFC3339Nano))
	n.seen[id] = seenHost{host: h, at: time.Now()}
	return h, true
}

// getLeader reads key of a KV bucket from the bucket's stream leader. A KV Get is a direct get,
// which any replica answers, one that has not applied the latest writes too; reads that decide
// where a session is (a record just written by another host must be found) or that precede a
// compare-and-set (the revision must be the latest) go to the leader instead.
func (n *Node) getLeader(ctx context.Context, bucket, key string) (jetstream.KeyValueEntry, error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": "$KV." + bucket + "." + key})
	msg, err := n.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+bucket, req)
	if err != nil {
		return nil, fmt.Errorf("reading %s from %s's leader: %w", key, bucket, err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Subject string    `json:"subject"`
			Seq     uint64    `json:"seq"`
			Header  []byte    `json:"hdrs"`
			Data    []byte    `json:"data"`
			Time    time.Time `json:"time"`
		} `json:"message"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("reading %s from %s's leader: its answer: %w", key, bucket, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == int(jetstream.JSErrCodeMessageNotFound) {
			return nil, jetstream.ErrKeyNotFound
		}
		return nil, fmt.Errorf("reading %s from %s's leader: %s (%d)", key, bucket, resp.Error.Description, resp.Error.ErrCode)
	}
	if resp.Message == nil {
		return nil, fmt.Errorf("reading %s from %s's leader: %w", key, bucket, jetstream.ErrInvalidJetStreamResponse)
	}
	if len(resp.Message.Header) > 0 {
		hdr, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return nil, fmt.Errorf("reading %s from %s's leader: its headers: %w", key, bucket, err)
		}
		if op := hdr.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
			return nil, jetstream.ErrKeyNotFound
		}
	}
	return leaderEntry{bucket: bucket, key: key, value: resp.Message.Data, rev: resp.Message.Seq, at: resp.Message.Time}, nil
}

// leaderEntry is a KV entry read by getLeader (a put: deletes read as not found).
type leaderEntry struct {
	bucket, key string
	value       []byte
	rev         uint64
	at          time.Time
}

func (e leaderEntry) Bucket() string                  { return e.bucket }
func (e leaderEntry) Key() string                     { return e.key }
func (e leaderEntry) Value() []byte                   { return e.value }
func (e leaderEntry) Revision() uint64                { return e.rev }
func (e leaderEntry) Created() time.Time              { return e.at }
func (e leaderEntry) Delta() uint64                   { return 0 }
func (e leaderEntry) Operation() jetstream.KeyValueOp { return jetstream.KeyValuePut }

var _ jetstream.KeyValueEntry = leaderEntry{}

// getSession reads session id's record: the bucket's direct get first (cheap, any replica), and
// the leader when that says there is none, since a replica behind the leader does not have a
// record another host has just written (a session created a moment ago would answer 404).
func (n *Node) getSession(ctx context.Context, id string) (jetstream.KeyValueEntry, error) {
	e, err := n.sess.Get(ctx, id)
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return e, err
	}
	return n.getLeader(ctx, SessionsBucket, id)
}
