package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/cluster"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

// fleetHost starts one agentbox host of a fleet on NATS url taking placements for tiers; heavy
// gives its dispatcher the shared heavy engine.
func fleetHost(t *testing.T, natsURL, id string, tiers []api.Tier, heavy bool) *httptest.Server {
	t.Helper()
	ctx := context.Background()
	nanoEng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	cfg := dispatch.Config{}
	if heavy {
		cfg.Heavy = eng
	}
	d := dispatch.New(nanoEng, cfg)
	var h http.Handler
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	jctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	node, err := cluster.Start(jctx, cluster.Config{NATS: []string{natsURL}, HostID: id, URL: "http://" + ts.Listener.Addr().String(),
		Tiers: tiers, Stats: d.Stats, Heartbeat: 200 * time.Millisecond, HostTTL: 2 * time.Second, PlaceTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(d, server.Config{Fleet: node})
	if err != nil {
		t.Fatal(err)
	}
	h = srv.Handler()
	ts.Start()
	t.Cleanup(func() {
		ts.Close()
		node.Close(context.Background())
		d.Close()
		nanoEng.Close(ctx)
	})
	return ts
}

// TestFleetPlacesHeavyOnHeavyHosts: in a fleet of a nano-only host and a heavy-only host
// (`--tiers heavy`), every heavy run goes to the heavy host on real
// runsc, whichever host it enters at, and every nano run to the nano host.
func TestFleetPlacesHeavyOnHeavyHosts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	natsAddr := l.Addr().String()
	l.Close()
	ns, err := cluster.StartNATS(cluster.EmbeddedConfig{Listen: natsAddr, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	hosts := map[string]*httptest.Server{
		"nano-only":  fleetHost(t, "nats://"+natsAddr, "nano-only", []api.Tier{api.TierNano}, false),
		"heavy-only": fleetHost(t, "nats://"+natsAddr, "heavy-only", []api.Tier{api.TierHeavy}, true),
	}
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, _ := agentbox.New(hosts["nano-only"].URL)
		if l, err := c.Hosts(ctx); err == nil && len(l.Hosts) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the two hosts did not see each other within 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cases := []struct {
		name  string
		req   api.RunRequest
		host  string
		tier  api.Tier
		print string
	}{
		{"tier heavy goes to the heavy host", api.RunRequest{Tier: api.TierHeavy, Code: "import numpy\nprint(numpy.arange(3).sum())"}, "heavy-only", api.TierHeavy, "3\n"},
		{"nano goes to the nano host", api.RunRequest{Tier: api.TierNano, Code: "print(2 + 2)"}, "nano-only", api.TierNano, "4\n"},
		{"auto without packages is placed as nano", api.RunRequest{Code: "print(5)"}, "nano-only", api.TierNano, "5\n"},
	}
	for _, c := range cases {
		for entry, ts := range hosts {
			t.Run(c.name+" entering at "+entry, func(t *testing.T) {
				body, _ := json.Marshal(c.req)
				req, _ := http.NewRequest("POST", ts.URL+"/v1/run", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var out api.RunResponse
				if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
					t.Fatalf("%d: %v", resp.StatusCode, err)
				}
				served := resp.Header.Get(cluster.HeaderHost)
				if served == "" {
					served = entry
				}
				if resp.StatusCode != 200 || served != c.host || out.Tier != c.tier || out.Stdout != c.print {
					t.Fatalf("%d served by %s on %s: %q %+v", resp.StatusCode, served, out.Tier, out.Stdout, out.Error)
				}
			})
		}
	}
}
