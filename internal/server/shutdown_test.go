package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
)

// TestShutdownStopsRunningCellAtGrace: a busy loop on the nano tier (a session cell and a one-shot
// run) with a 10-minute time limit is stopped when Shutdown's grace period ends: the request answers
// 503, and the engine's Close, given the expired context, returns soon after instead of waiting for
// the loop under the session's lock.
func TestShutdownStopsRunningCellAtGrace(t *testing.T) {
	const loop = "while True: pass"
	lim := api.Limits{TimeoutMS: 600_000}
	cases := []struct {
		name string
		// start sends the long request; it runs until the server stops it.
		start func(t *testing.T, base string) reply
	}{
		{"session cell", func(t *testing.T, base string) reply {
			r := doAt(t, base, call{method: "POST", path: "/v1/sessions", body: mustJSON(api.SessionRequest{Tier: api.TierNano, Limits: lim})}, checkBoth)
			if r.status != http.StatusCreated {
				t.Fatalf("creating a session: %d %s", r.status, r.body)
			}
			ses := decodeInto[api.Session](t, r)
			return doAt(t, base, call{method: "POST", path: "/v1/sessions/" + ses.ID + "/run", body: mustJSON(api.SessionRunRequest{Code: loop})}, checkBoth)
		}},
		{"run", func(t *testing.T, base string) reply {
			return doAt(t, base, call{method: "POST", path: "/v1/run", body: mustJSON(api.RunRequest{Code: loop, Tier: api.TierNano, Limits: lim})}, checkBoth)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, err := nano.New(context.Background(), nano.Config{PoolSize: -1, MaxConcurrent: 1})
			if err != nil {
				t.Fatal(err)
			}
			d := dispatch.New(e, dispatch.Config{})
			srv, err := New(d, Config{APIKeys: []string{testKey}})
			if err != nil {
				t.Fatal(err)
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(l)
			answered := make(chan reply, 1)
			go func() { answered <- tc.start(t, "http://"+l.Addr().String()) }()
			// Wait until the loop runs: it holds the engine's only slot.
			for deadline := time.Now().Add(30 * time.Second); e.Stats().Runs.Load() == 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the loop did not start")
				}
			}
			time.Sleep(200 * time.Millisecond)
			const grace = 500 * time.Millisecond
			sctx, cancel := context.WithTimeout(context.Background(), grace)
			defer cancel()
			start := time.Now()
			if err := srv.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Shutdown = %v, want the grace period's deadline", err)
			}
			select {
			case r := <-answered:
				if r.status != http.StatusServiceUnavailable {
					t.Errorf("the stopped request answered %d %s, want 503", r.status, r.body)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the running request was not stopped by the end of the grace period")
			}
			closed := make(chan error, 1)
			go func() {
				d.Close()
				closed <- e.Close(sctx)
			}()
			select {
			case <-closed:
			case <-time.After(30 * time.Second):
				t.Fatal("closing the dispatcher and the engine after the grace period did not return")
			}
			t.Logf("request stopped and engine closed %v after Shutdown began (grace %v)", time.Since(start).Round(time.Millisecond), grace)
		})
	}
}
