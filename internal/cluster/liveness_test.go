package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/cluster"
)

// A host whose heartbeats are late (a loaded box, a GC pause) drops out of the others' view of
// the fleet, but it still serves its sessions: they must keep answering there, neither 404 nor
// restored on another host.
func TestFleetSlowHostKeepsItsSessions(t *testing.T) {
	for _, tc := range []struct {
		name      string
		replicate bool
	}{
		{"without replication its session is not gone", false},
		{"with replication its session is not restored elsewhere", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, 3, hostOpts{replicate: tc.replicate})
			h0, h1 := f.hosts[0], f.hosts[1]
			id := newSessionOn(t, h0, "h1")
			runCell(t, h0, id, "x = 41")
			if tc.replicate {
				waitReplicated(t, f.js(), id, currentStep(t, h0, id)) // a restore would find its replica
			}
			h1.node.PauseHeartbeats(true)
			waitFor(t, 20*time.Second, "h1's record to expire in h0's view", func() bool {
				for _, h := range h0.node.Hosts(context.Background()).Hosts {
					if h.ID == "h1" {
						return false
					}
				}
				return true
			})
			r := runCell(t, h0, id, "print(x + 1)")
			if got := decode[api.RunResponse](t, r).Stdout; got != "42\n" || r.host != "h1" {
				t.Fatalf("print(x + 1) answered %q by %q, want 42 by h1", got, r.host)
			}
			if got := r.header.Get(cluster.HeaderRestoredFrom); got != "" {
				t.Fatalf("the live host's session was restored: %s: %q", cluster.HeaderRestoredFrom, got)
			}
			if tc.replicate {
				if host := sessionHost(t, f.js(), id); host != "h1" {
					t.Fatalf("the sessions bucket names %s, want h1", host)
				}
			}
			h1.node.PauseHeartbeats(false)
		})
	}
}

// A killed host is still found gone at once: it does not answer the probe.
func TestFleetKilledHostIsGoneAfterItsRecordExpires(t *testing.T) {
	f := newFleet(t, 3, hostOpts{})
	h0, h1 := f.hosts[0], f.hosts[1]
	id := newSessionOn(t, h0, "h1")
	h1.kill()
	waitFor(t, 20*time.Second, "h1's record to expire in h0's view", func() bool { return len(h0.node.Hosts(context.Background()).Hosts) == 2 })
	start := time.Now()
	g := call(t, h0, "GET", "/v1/sessions/"+id, userKey, nil)
	if g.status != 404 || !strings.Contains(string(g.body), "its host h1 left the fleet: no heartbeat since") {
		t.Fatalf("%d %s", g.status, g.body)
	}
	// Generous: a probe of a killed host ends with "no responders", not its timeout; this only
	// catches a lookup that waits out something far longer.
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("the 404 took %s", d)
	}
}

// Session records are read so that a record just written is found and deletes read as none.
func TestFleetSessionRecordReads(t *testing.T) {
	f := newFleet(t, 1, hostOpts{})
	h0 := f.hosts[0]
	ctx := context.Background()
	kv, err := f.js().KeyValue(ctx, cluster.SessionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(ctx, "ses_written", []byte(`{"host":"h9"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "ses_deleted", []byte(`{"host":"h9"}`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "ses_deleted"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "ses_purged", []byte(`{"host":"h9"}`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "ses_purged"); err != nil {
		t.Fatal(err)
	}
	for _, leader := range []bool{true, false} {
		for _, tc := range []struct {
			key     string
			want    string
			wantRev uint64
		}{
			{"ses_written", "h9", rev},
			{"ses_deleted", "", 0},
			{"ses_purged", "", 0},
			{"ses_never", "", 0},
		} {
			t.Run(tc.key, func(t *testing.T) {
				b, got, err := h0.node.GetSessionRecord(tc.key, leader)
				if tc.want == "" {
					if !errors.Is(err, jetstream.ErrKeyNotFound) {
						t.Fatalf("leader=%v: %s, rev %d, err %v: want not found", leader, b, got, err)
					}
					return
				}
				var rec struct {
					Host string `json:"host"`
				}
				if err != nil || json.Unmarshal(b, &rec) != nil || rec.Host != tc.want || got != tc.wantRev {
					t.Fatalf("leader=%v: %s rev %d err %v; want host %s rev %d", leader, b, got, err, tc.want, tc.wantRev)
				}
			})
		}
	}
}

// A deleted session is forgotten by its DELETE's answer and by the dispatcher's close hook at once;
// whichever deletes the record second finds it gone, which is no error.
func TestFleetSessionRecordForgottenByTwoAtOnce(t *testing.T) {
	f := newFleet(t, 1, hostOpts{})
	h0 := f.hosts[0]
	ctx := context.Background()
	kv, err := f.js().KeyValue(ctx, cluster.SessionsBucket)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		id := "ses_twice" + strconv.Itoa(i)
		if _, err := kv.Put(ctx, id, []byte(`{"host":"h0"}`)); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 4)
		var wg sync.WaitGroup
		for range cap(errs) {
			wg.Go(func() { errs <- h0.node.ForgetRecord(id) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("forgetting %s: %v", id, err)
			}
		}
		if _, err := kv.Get(ctx, id); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("the record of %s after it was forgotten: %v", id, err)
		}
	}
}
