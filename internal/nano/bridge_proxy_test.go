package nano

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/egress"
	"github.com/entersandbox/agentbox/internal/netpolicy"
	"github.com/entersandbox/agentbox/internal/tier"
)

// proxyGuard is what the egress proxy needs of a sandbox's policy, over a *netpolicy.Guard whose
// events it keeps: the test decides the allow list and the secret itself, so that it checks the
// bridge and the proxy alone (compiled policies reach both tiers in internal/cli's TestRunGovernedNetwork).
type proxyGuard struct {
	*netpolicy.Guard
	allow  string
	secret api.SecretRule
}

func (g proxyGuard) Decide(r netpolicy.Request) netpolicy.Decision {
	if strings.EqualFold(r.Host, g.allow) {
		return netpolicy.Decision{Allow: true, Host: g.allow, Verdict: api.VerdictAllowed, Rule: "allow:" + g.allow, Source: "policy"}
	}
	return g.Guard.Decide(r)
}

func (g proxyGuard) Secrets(host string) []api.SecretRule {
	if host == g.secret.Host {
		return []api.SecretRule{g.secret}
	}
	return nil
}

func (g proxyGuard) SecretValues() []string       { return []string{g.secret.Value} }
func (g proxyGuard) DLP() (string, bool)          { return api.DLPOff, false }
func (g proxyGuard) RangeAllowed(netip.Addr) bool { return false }

// TestBridgeThroughProxy: the bridge in front of the real egress proxy's RoundTrip, against a loopback
// HTTPS upstream whose certificate the proxy verifies: the guest's urllib request arrives with the
// brokered secret the guest never saw, the proxy's refusals reach the guest as HTTPError naming the
// rule, a destination that does not answer is URLError, and the events are on the run's Guard.
func TestBridgeThroughProxy(t *testing.T) {
	var mu sync.Mutex
	var seen []string // guarded by mu: "METHOD path Authorization" the upstream got
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		if r.URL.Path == "/slow" {
			select {
			case <-r.Context().Done():
			case <-time.After(20 * time.Second):
			}
			return
		}
		fmt.Fprint(w, "hello through the proxy")
	}))
	defer up.Close()
	p := newTestProxy(t, up, "down.example.com=127.0.0.1:1")
	secret := api.SecretRule{Host: "example.com", Header: "Authorization", Value: "Bearer s3cret-value-42"}
	e, err := New(context.Background(), Config{PoolSize: -1, HTTP: HTTPFunc(func(ctx context.Context, g *netpolicy.Guard, r *http.Request) (*http.Response, error) {
		return p.RoundTrip(ctx, proxyGuard{Guard: g, allow: "example.com", secret: secret}, r)
	})})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())

	cases := []struct {
		name     string
		code     string
		stdout   string
		upstream string   // what the upstream got last ("" when nothing reaches it)
		rules    []string // the rules of the events recorded
	}{
		{"allowed GET gets the brokered secret", "import urllib.request, os\nr = urllib.request.urlopen('https://example.com/hello')\nprint(r.status, r.read().decode(), 's3cret' in repr(dict(os.environ)))",
			"200 hello through the proxy False", "GET /hello Bearer s3cret-value-42", []string{"allow:example.com"}},
		{"denied host is HTTPError naming the rule", "import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen('https://other.example.org/')\nexcept urllib.error.HTTPError as e:\n    print(e.code, e.headers['X-Agentbox-Rule'], e.read().decode())",
			"403 default:offline", "", []string{"default:offline"}},
		{"the guest's timeout is TimeoutError", "import urllib.request\ntry:\n    urllib.request.urlopen('https://example.com/slow', timeout=0.5)\nexcept TimeoutError as e:\n    print('TimeoutError', e)",
			"TimeoutError timed out", "GET /slow Bearer s3cret-value-42", nil},
		{"a destination that does not answer is URLError", "import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen('https://down.example.com/', timeout=10)\nexcept urllib.error.URLError as e:\n    print('URLError', e.reason)",
			"URLError", "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mu.Lock()
			before := len(seen)
			mu.Unlock()
			rctx, g := withNetwork()
			res, err := e.Run(rctx, api.RunRequest{Code: c.code, Limits: api.Limits{TimeoutMS: 30_000}}, tier.Stream{})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(res.Stdout, c.stdout) || res.ExitCode != 0 {
				t.Fatalf("stdout %q, want %q (exit %d, stderr %s)", res.Stdout, c.stdout, res.ExitCode, res.Stderr)
			}
			mu.Lock()
			got := seen[before:]
			mu.Unlock()
			if c.upstream == "" && len(got) != 0 || c.upstream != "" && (len(got) != 1 || got[0] != c.upstream) {
				t.Fatalf("upstream got %q, want %q", got, c.upstream)
			}
			events := g.Drain()
			if c.rules != nil {
				var rules []string
				for _, ev := range events {
					rules = append(rules, ev.Rule)
				}
				if strings.Join(rules, ",") != strings.Join(c.rules, ",") {
					t.Fatalf("event rules %q, want %q (%+v)", rules, c.rules, events)
				}
			} else if len(events) == 0 {
				t.Fatal("no event recorded")
			}
		})
	}
}

// newTestProxy starts the real egress proxy, trusting up's certificate and pinning example.com (the
// name in httptest's certificate) to it, and extra pins; no name is looked up in DNS.
func newTestProxy(t testing.TB, up *httptest.Server, pins ...string) *egress.Proxy {
	t.Helper()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "upstream.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := egress.New(egress.Config{
		CADir:       filepath.Join(dir, "ca"),
		Resolve:     append([]string{"example.com=" + up.Listener.Addr().String()}, pins...),
		AllowCIDRs:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		UpstreamCAs: []string{caFile},
		Lookup: func(context.Context, string) ([]netip.Addr, error) {
			return nil, errors.New("no DNS in this test")
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}
