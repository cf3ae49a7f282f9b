package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// fakeFleet is a fleet of one recorded host; Wrap passes requests through.
type fakeFleet struct{ drained []string }

func (f *fakeFleet) Wrap(next http.Handler, _ func(http.ResponseWriter, *http.Request, error)) http.Handler {
	return next
}

func (f *fakeFleet) host(state string) api.Host {
	return api.Host{ID: "h1", URL: "http://127.0.0.1:1", Tiers: []api.Tier{api.TierNano}, State: state,
		Capacity: api.HostCapacity{Runs: 4, Sessions: 64}, ConfigSHA256: "ab", StartedAt: "2026-12-01T00:00:00Z", HeartbeatAt: "2026-12-01T00:00:01Z"}
}

func (f *fakeFleet) Hosts(context.Context) api.HostList {
	return api.HostList{Self: "h1", Hosts: []api.Host{f.host(api.HostActive)}}
}

func (f *fakeFleet) Drain(_ context.Context, id string) (api.Host, error) {
	if id != "h1" && id != "self" {
		return api.Host{}, errdefs.With(errdefs.NotFound, errTest("host "+id+" is not in the fleet"))
	}
	f.drained = append(f.drained, id)
	return f.host(api.HostDraining), nil
}

type errTest string

func (e errTest) Error() string { return string(e) }

func TestHostsRoutes(t *testing.T) {
	t.Run("a single host answers 404", func(t *testing.T) {
		for _, c := range []call{{method: "GET", path: "/v1/hosts"}, {method: "POST", path: "/v1/hosts/self/drain"}} {
			if r := do(t, c, checkBoth); r.status != 404 {
				t.Fatalf("%s %s on a single host: %d %s", c.method, c.path, r.status, r.body)
			}
		}
	})
	fleet := &fakeFleet{}
	const admin = "fleet-admin-key-0123456789"
	srv, err := New(dispatch.New(eng, dispatch.Config{}), Config{APIKeys: []string{testKey}, Keys: []APIKey{{Key: admin, Admin: true}}, Fleet: fleet})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	fts := hs.URL
	cases := []struct {
		name   string
		c      call
		status int
		mode   int
	}{
		{"any key lists the hosts", call{method: "GET", path: "/v1/hosts"}, 200, checkBoth},
		{"no key is refused", call{method: "GET", path: "/v1/hosts", key: "-"}, 401, checkResponse},
		{"a user key may not drain", call{method: "POST", path: "/v1/hosts/h1/drain"}, 403, checkBoth},
		{"an admin key drains", call{method: "POST", path: "/v1/hosts/h1/drain", key: admin}, 202, checkBoth},
		{"an unknown host is 404", call{method: "POST", path: "/v1/hosts/h9/drain", key: admin}, 404, checkBoth},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := doAt(t, fts, c.c, c.mode)
			if r.status != c.status {
				t.Fatalf("%d %s", r.status, r.body)
			}
			if c.status == 200 {
				var l api.HostList
				if err := json.Unmarshal(r.body, &l); err != nil || l.Self != "h1" || len(l.Hosts) != 1 {
					t.Fatalf("list %s (%v)", r.body, err)
				}
			}
		})
	}
	if len(fleet.drained) != 1 || fleet.drained[0] != "h1" {
		t.Fatalf("drained %v, want the admin's one call", fleet.drained)
	}
}
