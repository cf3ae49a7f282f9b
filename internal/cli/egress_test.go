package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dlp"
	"github.com/entersandbox/agentbox/internal/egress/egresstest"
)

// upstream is an HTTPS server on a loopback address with a certificate for name from a CA of its
// own, whose PEM file it returns; it answers with the request's method and path and signals auth
// for each request (with its Authorization header).
func upstream(t *testing.T, name string) (addr, caFile string, auth chan string) {
	t.Helper()
	ca := egresstest.NewCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	auth = make(chan string, 16)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth <- r.Header.Get("Authorization")
		io.WriteString(w, "hello from upstream "+r.Method+" "+r.URL.Path)
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, name)}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), ca.File, auth
}

// TestRunGovernedNetwork: `agentbox run --policy` starts the egress data plane and puts the run
// behind it, on each tier: an allowed HTTPS request reaches a real upstream on a loopback address
// (through TLS inspection; on heavy the sandbox trusts the installation's CA), a host outside the
// run's policy is refused (nano: 403 from the bridge; heavy: the DNS stub does not answer for it),
// and both are in network_events.
func TestRunGovernedNetwork(t *testing.T) {
	addr, caFile, auth := upstream(t, "api.test")
	_, port, _ := net.SplitHostPort(addr)
	policy := filepath.Join(t.TempDir(), "policy.toml")
	ceiling := `allow = ["api.test", "evil.test"]
inspect_tls = true
allow_cidrs = ["127.0.0.0/8"]
`
	if err := os.WriteFile(policy, []byte(ceiling), 0o600); err != nil {
		t.Fatal(err)
	}
	program := `import urllib.request, urllib.error
print(urllib.request.urlopen("https://api.test/hello", timeout=20).read().decode())
try:
    urllib.request.urlopen("https://evil.test/x", timeout=20)
except urllib.error.HTTPError as e:
    print("refused", e.code)
except urllib.error.URLError as e:
    print("refused name:", e.reason)
`
	tiers := []string{"nano"}
	if os.Getenv("AGENTBOX_INTEGRATION") == "1" {
		if err := heavyInstalled(); err != nil {
			t.Fatalf("AGENTBOX_INTEGRATION=1 but the heavy tier is not installed: %v", err)
		}
		tiers = append(tiers, "heavy")
	} else {
		t.Log("heavy case not run: set AGENTBOX_INTEGRATION=1 (needs root, runsc and nftables support)")
	}
	for _, tierName := range tiers {
		t.Run(tierName, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var out, errOut bytes.Buffer
			args := []string{"run", "--json", "--tier", tierName, "--policy", policy, "--allow-host", "api.test",
				"--egress-resolve", "api.test=127.0.0.1:" + port, "--egress-upstream-ca", caFile,
				"--egress-ca-dir", t.TempDir(), "--inspect-tls", "--timeout", "60s", "-"}
			code := Main(ctx, args, strings.NewReader(program), &out, &errOut)
			var res api.RunResponse
			if err := json.Unmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("exit %d, stdout %q, stderr %q: %v", code, out.String(), errOut.String(), err)
			}
			if !strings.Contains(res.Stdout, "hello from upstream GET /hello") || !strings.Contains(res.Stdout, "refused") {
				t.Fatalf("stdout %q stderr %q (agentbox: %s)", res.Stdout, res.Stderr, errOut.String())
			}
			verdicts := map[string]string{}
			for _, ev := range res.NetworkEvents {
				verdicts[ev.Host] = ev.Verdict
			}
			if verdicts["api.test"] != api.VerdictAllowed || verdicts["evil.test"] != api.VerdictDenied {
				t.Fatalf("network events %+v", res.NetworkEvents)
			}
			select {
			case <-auth:
			default:
				t.Fatal("the upstream saw no request")
			}
		})
	}
}

// TestNetworkEventsAreAudited: the server's network sink commits each sandbox's egress decisions to
// the audit log, a DLP finding as egress.dlp with detector types and counts (never values), under
// the session or run it came from and the key that started it.
func TestNetworkEventsAreAudited(t *testing.T) {
	l, err := audit.Open(context.Background(), audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sink := networkRecorder(l, slog.New(slog.DiscardHandler))
	sink("key_1", "ses_1", api.NetworkEvent{Host: "pypi.org", Method: "GET", Path: "/simple/", Verdict: api.VerdictAllowed, Rule: "allow:pypi.org"})
	sink("key_1", "run_2", api.NetworkEvent{Host: "api.example.com", Method: "POST", Path: "/v1", Verdict: api.VerdictBlockedDLP,
		Rule: "dlp:block", Detectors: []string{"card", "card", "email"}})
	for _, tc := range []struct {
		typ, session, verdict, host string
	}{
		{audit.TypeEgressRequest, "ses_1", audit.VerdictAllow, "pypi.org"},
		{audit.TypeEgressDLP, "", audit.VerdictBlock, "api.example.com"},
	} {
		got, err := l.Search(context.Background(), audit.Query{Type: tc.typ})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Events) != 1 {
			t.Fatalf("%s: %d events", tc.typ, len(got.Events))
		}
		e := got.Events[0]
		b, _ := json.Marshal(e)
		if e.Session != tc.session || e.Verdict != tc.verdict || e.Actor != "key_1" || !strings.Contains(string(b), tc.host) {
			t.Fatalf("%s: %s", tc.typ, b)
		}
		if tc.typ == audit.TypeEgressDLP && !strings.Contains(string(b), `"count":2`) {
			t.Fatalf("detector counts missing: %s", b)
		}
	}
}

// TestMCPScannerFailsClosed: the relay's scanner finds what the DLP engine finds, and when the
// engine cannot be compiled it reports the whole text, so that block refuses and redact removes it.
func TestMCPScannerFailsClosed(t *testing.T) {
	text := []byte(`{"card": "4111 1111 1111 1111"}`)
	for _, tc := range []struct {
		name     string
		engine   func() (*dlp.Engine, error)
		wantType string
		redacted string
	}{
		{"engine", func() (*dlp.Engine, error) { return dlp.New(dlp.Config{}) }, "card", `{"card": "[REDACTED:card]"}`},
		{"no engine", func() (*dlp.Engine, error) { return nil, errors.New("bad pack") }, "dlp_unavailable", "[REDACTED:dlp_unavailable]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mcpScanner{tc.engine}
			fs := s.Scan(text)
			if len(fs) != 1 || fs[0].Type != tc.wantType {
				t.Fatalf("findings %+v, want one %s", fs, tc.wantType)
			}
			if got := string(s.Redact(text, fs)); got != tc.redacted {
				t.Fatalf("redacted %q, want %q", got, tc.redacted)
			}
		})
	}
}
