package cluster

import (
	"log/slog"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/tier"
)

// The replication queue is bounded and keeps only a session's newest step; nothing is sent here
// (no sending goroutine), so what Committed and Ended queue stays to be looked at.
func TestReplicationQueueIsBoundedAndCoalesces(t *testing.T) {
	ns, err := StartNATS(EmbeddedConfig{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r := &replicator{n: &Node{nc: nc, cfg: Config{HostID: "h0"}}, log: slog.New(slog.DiscardHandler), maxWait: 2, pending: map[string]*dispatch.Committed{}, ended: map[string]bool{},
		wake: make(chan struct{}, 1)}
	step := func(session string, n int, t api.Tier) *dispatch.Committed {
		c := &dispatch.Committed{Session: session, Step: n, Snap: &tier.Snapshot{Tier: t}}
		r.Committed(c)
		return c
	}
	step("ses_a", 1, api.TierNano)
	newest := step("ses_a", 2, api.TierNano)
	step("ses_b", 1, api.TierNano)
	step("ses_c", 1, api.TierNano) // the queue holds two sessions
	step("ses_d", 1, api.TierHeavy)
	tests := []struct {
		name      string
		got, want int64
	}{
		{"a session's newer step replaces its queued one", r.coalesced.Load(), 1},
		{"a step beyond the queue's size is dropped", r.dropped.Load(), 1},
		{"heavy steps are skipped", r.skipped.Load(), 1},
		{"the queue holds one step per session", int64(r.stats().Pending), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %d, want %d", tt.got, tt.want)
			}
		})
	}
	t.Run("the oldest session goes first, with its newest step", func(t *testing.T) {
		if c, _, _ := r.next(); c != newest {
			t.Fatalf("next is %+v, want ses_a's step 2", c)
		}
	})
	t.Run("an ended session's queued step is replaced by its deletion", func(t *testing.T) {
		r.Ended("ses_b")
		c, deleted, ok := r.next()
		if c != nil || deleted != "ses_b" || !ok {
			t.Fatalf("next is %+v, %q, %v; want the deletion of ses_b", c, deleted, ok)
		}
		if _, _, ok := r.next(); ok {
			t.Fatal("more queued than was committed")
		}
	})
}
