package netpolicy

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// testCeiling is the ceiling most tests compile under.
const testCeiling = `
allow = [
  "pypi.org", "files.pythonhosted.org", "*.github.com", "github.com", "example.com", "docs.example.org",
  "pinned.example.net", "example.com:8443",
  { host = "api.example.com", methods = ["GET", "POST"], paths = ["/v1/"] },
  { host = "bank.example", no_inspect = true },
  "internal.corp",
]
deny = ["*.evil.github.com", "169.254.0.0/16"]
allow_cidrs = ["10.1.0.0/16"]
dlp = "log"
rule_packs = ["packs/pii.toml"]

[secrets.API_TOKEN]
env = "AGENTBOX_TEST_TOKEN"
hosts = ["api.example.com"]

[secrets.LITERAL]
value = "s3cr3t"

[grants]
budget_bytes = 1000
ttl = "10m"
`

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func mustCeiling(t testing.TB, text string) *Ceiling {
	t.Helper()
	c, err := ParseCeiling("/etc/agentbox/policy.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	c.LookupEnv = func(k string) (string, bool) {
		if k == "AGENTBOX_TEST_TOKEN" {
			return "tok-123", true
		}
		return "", false
	}
	return c
}

func fixedClock(t *time.Time) func() time.Time { return func() time.Time { return *t } }

func TestParseCeilingErrorsNameFileAndLine(t *testing.T) {
	cases := []struct {
		name, text, want string
	}{
		{"TOML syntax", "allow = [\n\"a.com\",\n= 3", "policy.toml:3:"},
		{"unknown key", "allow = [\"a.com\"]\n\nallowed_cidrs = []", "policy.toml:3: unknown key \"allowed_cidrs\""},
		{"bad host", "dlp = \"log\"\nallow = [\"[evil.com]\"]", "policy.toml:2: allow \"[evil.com]\""},
		{"address in allow", "allow = [\"10.0.0.1\"]", "policy.toml:1: allow \"10.0.0.1\": addresses go in allow_cidrs"},
		{"bad dlp", "\ndlp = \"maybe\"", "policy.toml:2: dlp \"maybe\""},
		{"dlp_min stronger than dlp", "dlp = \"log\"\ndlp_min = \"block\"", "policy.toml:2: dlp_min \"block\" is stronger"},
		{"bad cidr", "allow_cidrs = [\n  \"10.0.0.0/33\"]", "policy.toml:2: allow_cidrs"},
		{"secret needs one source", "[secrets.X]\nhosts = [\"a.com\"]", "policy.toml:1: secrets.X: give exactly one"},
		{"secret name", "[secrets.lower]\nvalue = \"v\"", "policy.toml:1: secrets.lower"},
		{"bad ttl", "[grants]\nttl = \"soon\"", "policy.toml:2: grants.ttl"},
		{"bad index", "[grants]\npackage_indexes = [\"ftp://x/\"]", "policy.toml:2: grants.package_indexes"},
		{"no_inspect with bounds", "allow = [{ host = \"a.com\", paths = [\"/x\"], no_inspect = true }]", "policy.toml:1: allow \"a.com\": a no_inspect rule"},
		{"bad ceiling port", "allow = [\"a.com:99999\"]", "policy.toml:1: allow \"a.com:99999\": port"},
		{"unknown rule key", "allow = [{ host = \"a.com\", port = 8 }]", "unknown key \"port\""},
		{"wildcard in the middle", "deny = [\"a.*.com\"]", "policy.toml:1: deny \"a.*.com\""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCeiling("policy.toml", []byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseCeiling error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestParseCeilingFields(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	if c.DLP != api.DLPLog || c.InspectTLS || len(c.AllowCIDRs) != 1 || c.AllowCIDRs[0] != netip.MustParsePrefix("10.1.0.0/16") {
		t.Fatalf("ceiling %+v", c)
	}
	if got := c.RulePacks; len(got) != 1 || got[0] != "/etc/agentbox/packs/pii.toml" {
		t.Fatalf("rule packs %v, want them relative to the ceiling file", got)
	}
	if c.budget != 1000 || c.ttl != 10*time.Minute {
		t.Fatalf("grants budget %d ttl %v", c.budget, c.ttl)
	}
	def := mustCeiling(t, `allow = ["*"]`)
	if def.DLP != api.DLPBlock || def.budget != 256<<20 || def.ttl != time.Hour || len(def.indexes) != 3 {
		t.Fatalf("defaults: dlp %q budget %d ttl %v indexes %d", def.DLP, def.budget, def.ttl, len(def.indexes))
	}
}

func TestCompileRefusals(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	yes := true
	no := false
	inspecting := mustCeiling(t, "inspect_tls = true\nallow = [\"a.com\", { host = \"pin.com\", no_inspect = true }]")
	cases := []struct {
		name    string
		c       *Ceiling
		np      *api.NetworkPolicy
		intent  *api.Intent
		class   *errdefs.Class
		message string
	}{
		{"no ceiling", nil, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}}, nil, errdefs.Forbidden, "no network ceiling"},
		{"no ceiling with an intent", nil, nil, &api.Intent{Packages: []string{"requests"}}, errdefs.Forbidden, "no network ceiling"},
		{"host outside the ceiling", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "evil.com"}}}, nil, errdefs.Forbidden, `ceiling:allow: network.allow[0] "evil.com"`},
		{"wider wildcard than the ceiling", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "*.com"}}}, nil, errdefs.Forbidden, "ceiling:allow:"},
		{"wildcard over an exact ceiling host", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "*.example.com"}}}, nil, errdefs.Forbidden, "ceiling:allow:"},
		{"ceiling deny covers the rule", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "x.evil.github.com"}}}, nil, errdefs.Forbidden, "ceiling:deny:*.evil.github.com"},
		{"method beyond the ceiling rule", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "api.example.com", Methods: []string{"DELETE"}}}}, nil, errdefs.Forbidden, "ceiling:allow:api.example.com: network.allow[0] \"api.example.com\" asks for method DELETE"},
		{"path beyond the ceiling rule", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "api.example.com", Paths: []string{"/v2/"}}}}, nil, errdefs.Forbidden, "asks for path /v2"},
		{"port the ceiling does not allow", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org:22"}}}, nil, errdefs.Forbidden, `ceiling:allow: network.allow[0] "pypi.org:22"`},
		{"intent URL on a port the ceiling does not allow", c, nil, &api.Intent{URLs: []string{"https://pypi.org:8443/x"}}, errdefs.Forbidden, "ceiling:allow: intent.urls[0]"},
		{"address outside allow_cidrs", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "10.2.0.1"}}}, nil, errdefs.Forbidden, "ceiling:allow_cidrs"},
		{"range wider than allow_cidrs", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "10.0.0.0/8"}}}, nil, errdefs.Forbidden, "ceiling:allow_cidrs"},
		{"numeric form of an address outside", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "2130706433"}}}, nil, errdefs.Forbidden, "ceiling:allow_cidrs"},
		{"weaker DLP than the ceiling", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}, DLP: api.DLPOff}, nil, errdefs.Forbidden, "ceiling:dlp_min"},
		{"unknown DLP", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}, DLP: "loud"}, nil, errdefs.InvalidArgument, "network.dlp"},
		{"inspect_tls off under an inspecting ceiling", inspecting, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}, InspectTLS: &no}, nil, errdefs.Forbidden, "ceiling:inspect_tls"},
		{"no_inspect the ceiling does not grant", inspecting, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com", NoInspect: true}}}, nil, errdefs.Forbidden, "asks for no_inspect"},
		{"no_inspect with bounds", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org", NoInspect: true, Paths: []string{"/x"}}}}, nil, errdefs.InvalidArgument, "no_inspect rule cannot bound"},
		{"writes after DLP not allowed by the ceiling", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}, AllowWritesAfterDLP: true}, nil, errdefs.Forbidden, "ceiling:allow_writes_after_dlp"},
		{"bracketed host", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "[pypi.org]"}}}, nil, errdefs.InvalidArgument, "network.allow[0]"},
		{"star for requests", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "*"}}}, nil, errdefs.InvalidArgument, "ceiling only"},
		{"lower-case method", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org", Methods: []string{"get"}}}}, nil, errdefs.InvalidArgument, "method \"get\""},
		{"dot-dot path", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org", Paths: []string{"/a/../b"}}}}, nil, errdefs.InvalidArgument, "dot segment"},
		{"intent URL outside the ceiling", c, nil, &api.Intent{URLs: []string{"https://evil.com/x"}}, errdefs.Forbidden, "ceiling:allow: intent.urls[0]"},
		{"intent URL not http", c, nil, &api.Intent{URLs: []string{"file:///etc/passwd"}}, errdefs.InvalidArgument, "intent.urls[0]"},
		{"intent URL with user info", c, nil, &api.Intent{URLs: []string{"https://u:p@example.com/"}}, errdefs.InvalidArgument, "user information"},
		{"bad package name", c, nil, &api.Intent{Packages: []string{"../etc"}}, errdefs.InvalidArgument, "intent.packages[0]"},
		{"git remote without a repository", c, nil, &api.Intent{Git: []string{"https://github.com/"}}, errdefs.InvalidArgument, "intent.git[0]"},
		{"secret name the ceiling lacks", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "api.example.com"}}, Secrets: []api.SecretRule{{Host: "api.example.com", Header: "Authorization", Value: "Bearer ${AWS_SECRET_ACCESS_KEY}"}}}, nil, errdefs.Forbidden, "ceiling:secrets: network.secrets[0] names ${AWS_SECRET_ACCESS_KEY}"},
		{"secret to a host the ceiling does not bind it to", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}, Secrets: []api.SecretRule{{Host: "pypi.org", Header: "Authorization", Value: "${API_TOKEN}"}}}, nil, errdefs.Forbidden, "ceiling:secrets:API_TOKEN"},
		{"secret to a host the policy does not allow", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}, Secrets: []api.SecretRule{{Host: "example.com", Header: "X-Key", Value: "${LITERAL}"}}}, nil, errdefs.InvalidArgument, "not allowed by this policy"},
		{"secret on a framing header", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}, Secrets: []api.SecretRule{{Host: "pypi.org", Header: "Content-Length", Value: "${LITERAL}"}}}, nil, errdefs.InvalidArgument, "cannot carry a secret"},
		{"secrets on an offline policy", c, &api.NetworkPolicy{Secrets: []api.SecretRule{{Host: "pypi.org", Header: "X", Value: "v"}}}, nil, errdefs.InvalidArgument, "nowhere to send"},
		{"stronger DLP than the ceiling is fine", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}, DLP: api.DLPBlock}, nil, nil, ""},
		{"DLP down to dlp_min is fine", mustCeiling(t, "dlp_min = \"log\"\nallow = [\"a.com\"]"), &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}, DLP: api.DLPLog}, nil, nil, ""},
		{"DLP below dlp_min", mustCeiling(t, "dlp_min = \"log\"\nallow = [\"a.com\"]"), &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}, DLP: api.DLPOff}, nil, errdefs.Forbidden, "ceiling:dlp_min"},
		{"inspect on is fine", c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}, InspectTLS: &yes}, nil, nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compile(tc.c, tc.np, "", tc.intent, nil)
			if tc.class == nil {
				if err != nil || p == nil {
					t.Fatalf("Compile = %v, %v", p, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Compile succeeded, want %s", tc.class.Name())
			}
			if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("Compile error %q (%v), want %s containing %q", err, errdefs.ClassOf(err), tc.class.Name(), tc.message)
			}
		})
	}
}

func TestCompileOffline(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	t.Run("task URLs without a ceiling", func(t *testing.T) {
		p, err := Compile(nil, nil, "write a server answering on http://localhost:5000/", nil, nil)
		if err != nil || !p.Offline() {
			t.Fatalf("Compile = %v, %v; want offline", p, err)
		}
	})
	t.Run("task URLs the ceiling refuses", func(t *testing.T) {
		p, err := Compile(c, nil, "write a server answering on http://localhost:5000/", nil, nil)
		if err != nil || !p.Offline() || len(p.Skipped()) != 1 {
			t.Fatalf("Compile = %v, %v; want offline with the URL skipped", p, err)
		}
	})
	for name, np := range map[string]*api.NetworkPolicy{"nil": nil, "empty allow": {Allow: []api.HostRule{}}, "deny only": {Deny: []api.HostRule{{Host: "a.com"}}}} {
		t.Run(name, func(t *testing.T) {
			for _, cc := range []*Ceiling{c, nil} {
				p, err := Compile(cc, np, "no URLs here", nil, nil)
				if err != nil || !p.Offline() {
					t.Fatalf("Compile = %v, %v; want offline", p, err)
				}
				if d := NewGuard(p, nil).Decide(Request{Host: "pypi.org", Port: 443}); d.Allow || d.Rule != "default:offline" {
					t.Fatalf("decision %+v", d)
				}
			}
		})
	}
}

func TestDecide(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	np := &api.NetworkPolicy{
		Allow: []api.HostRule{
			{Host: "PyPI.org."}, {Host: "*.github.com"}, {Host: "api.example.com", Methods: []string{"GET"}},
			{Host: "bank.example", NoInspect: true}, {Host: "10.1.2.0/24"}, {Host: "example.com:8443"},
			{Host: "docs.example.org", Methods: []string{"GET", "PUT"}, Paths: []string{"/guide/"}},
		},
		Deny: []api.HostRule{{Host: "gist.github.com"}, {Host: "docs.example.org", Methods: []string{"PUT"}, Paths: []string{"/guide/locked"}},
			{Host: "pypi.org", Methods: []string{"DELETE"}}, {Host: "bank.example", Paths: []string{"/transfer"}}},
	}
	p, err := Compile(c, np, "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name           string
		r              Request
		allow, inspect bool
		rule, host     string
		reason         string
	}{
		{"exact name any case", Request{Host: "PYPI.ORG", Port: 443}, true, true, "allow:pypi.org", "pypi.org", `allowed by network.allow[0] "PyPI.org."`},
		{"trailing dot", Request{Host: "pypi.org.", Port: 443}, true, true, "allow:pypi.org", "pypi.org", ""},
		{"bracketed name denied", Request{Host: "[pypi.org]", Port: 443}, false, false, "canonical:invalid", "", "brackets"},
		{"unknown host", Request{Host: "evil.com", Port: 443}, false, false, "ceiling:allow", "evil.com", ""},
		{"ceiling host the policy did not ask for", Request{Host: "example.com", Port: 443}, false, false, "default:deny", "example.com", ""},
		{"wildcard subdomain", Request{Host: "api.github.com", Port: 443}, true, false, "allow:*.github.com", "api.github.com", ""},
		{"wildcard deep subdomain", Request{Host: "a.b.github.com", Port: 443}, true, false, "allow:*.github.com", "a.b.github.com", ""},
		{"wildcard not the apex", Request{Host: "github.com", Port: 443}, false, false, "default:deny", "github.com", ""},
		{"deny over allow", Request{Host: "gist.github.com", Port: 443}, false, false, "deny:gist.github.com", "gist.github.com", `denied by network.deny[0] "gist.github.com"`},
		{"ceiling deny over allow", Request{Host: "x.evil.github.com", Port: 443}, false, false, "ceiling:deny:*.evil.github.com", "x.evil.github.com", ""},
		{"method allowed", Request{Host: "api.example.com", Port: 443, Method: "GET", Path: "/v1/items"}, true, true, "allow:api.example.com", "api.example.com", ""},
		{"method refused", Request{Host: "api.example.com", Port: 443, Method: "POST", Path: "/v1/items"}, false, false, "default:deny", "api.example.com", "POST"},
		{"inherited ceiling path refused", Request{Host: "api.example.com", Port: 443, Method: "GET", Path: "/admin"}, false, false, "default:deny", "api.example.com", ""},
		{"bounded rule is inspected", Request{Host: "api.example.com", Port: 443}, true, true, "allow:api.example.com", "api.example.com", ""},
		{"path prefix", Request{Host: "docs.example.org", Port: 443, Method: "GET", Path: "/guide/intro?x=1"}, true, true, "allow:docs.example.org", "docs.example.org", ""},
		{"path prefix by segments", Request{Host: "docs.example.org", Port: 443, Method: "GET", Path: "/guidebook"}, false, false, "default:deny", "docs.example.org", ""},
		{"dot-dot out of the prefix", Request{Host: "docs.example.org", Port: 443, Method: "GET", Path: "/guide/../admin"}, false, false, "canonical:invalid", "docs.example.org", "dot segment"},
		{"encoded dot-dot", Request{Host: "docs.example.org", Port: 443, Method: "GET", Path: "/guide/%2e%2e/admin"}, false, false, "canonical:invalid", "docs.example.org", ""},
		{"percent-encoded path matches", Request{Host: "docs.example.org", Port: 443, Method: "GET", Path: "/%67uide/x"}, true, true, "allow:docs.example.org", "docs.example.org", ""},
		{"bounded deny", Request{Host: "docs.example.org", Port: 443, Method: "PUT", Path: "/guide/locked/x"}, false, false, "deny:docs.example.org", "docs.example.org", ""},
		{"bounded deny leaves other methods", Request{Host: "docs.example.org", Port: 443, Method: "GET", Path: "/guide/locked/x"}, true, true, "allow:docs.example.org", "docs.example.org", ""},
		{"bounded deny does not deny the connection", Request{Host: "docs.example.org", Port: 443}, true, true, "allow:docs.example.org", "docs.example.org", ""},
		{"bounded deny makes an unbounded rule inspected", Request{Host: "pypi.org", Port: 443}, true, true, "allow:pypi.org", "pypi.org", ""},
		{"bounded deny on a no_inspect host denies the connection", Request{Host: "bank.example", Port: 443}, false, false, "deny:bank.example", "bank.example", "cannot be checked"},
		{"lower-case method refused", Request{Host: "pypi.org", Port: 443, Method: "get", Path: "/"}, false, false, "canonical:invalid", "pypi.org", ""},
		{"bounded deny on a no_inspect host, port 80 too", Request{Host: "bank.example", Port: 80}, false, false, "deny:bank.example", "bank.example", ""},
		{"other port refused", Request{Host: "pypi.org", Port: 22}, false, false, "default:deny", "pypi.org", ""},
		{"port 80 allowed", Request{Host: "pypi.org", Port: 80}, true, true, "allow:pypi.org", "pypi.org", ""},
		{"explicit port", Request{Host: "example.com", Port: 8443}, true, false, "allow:example.com:8443", "example.com", ""},
		{"explicit port only", Request{Host: "example.com", Port: 443}, false, false, "default:deny", "example.com", ""},
		{"address in an allowed range", Request{Host: "10.1.2.3", Port: 443}, true, false, "allow:10.1.2.0/24", "10.1.2.3", ""},
		{"address in a numeric form", Request{Host: "0x0a.1.2.3", Port: 443}, true, false, "allow:10.1.2.0/24", "10.1.2.3", ""},
		{"address outside the request range", Request{Host: "10.1.3.3", Port: 443}, false, false, "default:deny", "10.1.3.3", ""},
		{"loopback in decimal", Request{Host: "2130706433", Port: 80}, false, false, "ceiling:allow_cidrs", "127.0.0.1", ""},
		{"metadata address", Request{Host: "169.254.169.254", Port: 80}, false, false, "ceiling:deny:169.254.0.0/16", "169.254.169.254", ""},
		{"raw connection to an allowed address", Request{Addr: netip.MustParseAddrPort("10.1.2.9:443"), Port: 443}, true, false, "allow:10.1.2.0/24", "10.1.2.9", ""},
		{"raw connection to another address", Request{Addr: netip.MustParseAddrPort("93.184.216.34:443"), Port: 443}, false, false, "ceiling:allow_cidrs", "93.184.216.34", ""},
		{"no host, no address", Request{Port: 443}, false, false, "canonical:invalid", "", ""},
		{"IPv6 literal host", Request{Host: "[::1]", Port: 443}, false, false, "ceiling:allow_cidrs", "::1", ""},
		{"DNS allowed name", Request{Host: "pypi.org", DNS: true}, true, false, "allow:pypi.org", "pypi.org", ""},
		{"DNS of an explicit-port rule", Request{Host: "example.com", DNS: true}, true, false, "allow:example.com:8443", "example.com", ""},
		{"DNS unknown name", Request{Host: "tunnel.evil.com", DNS: true}, false, false, "ceiling:allow", "tunnel.evil.com", ""},
		{"DNS asked on the stub's port", Request{Host: "pypi.org", Port: 53, DNS: true}, true, false, "allow:pypi.org", "pypi.org", ""},
		{"DNS for an address", Request{Host: "10.1.2.3", DNS: true}, false, false, "canonical:invalid", "10.1.2.3", ""},
		{"IDNA name", Request{Host: "bücher.example", Port: 443}, false, false, "ceiling:allow", "xn--bcher-kva.example", ""},
		{"port out of range", Request{Host: "pypi.org", Port: 70000}, false, false, "canonical:invalid", "pypi.org", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := NewGuard(p, nil).Decide(tc.r)
			if d.Allow != tc.allow || d.Rule != tc.rule || d.Host != tc.host || d.Inspect != tc.inspect {
				t.Fatalf("Decide(%+v) = %+v; want allow %v rule %q host %q inspect %v", tc.r, d, tc.allow, tc.rule, tc.host, tc.inspect)
			}
			if want := map[bool]string{true: api.VerdictAllowed, false: api.VerdictDenied}[tc.allow]; d.Verdict != want {
				t.Fatalf("verdict %q, want %q", d.Verdict, want)
			}
			if d.Reason == "" {
				t.Fatalf("a decision without a reason: %+v", d)
			}
			if tc.reason != "" && !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("reason %q, want it to say %q", d.Reason, tc.reason)
			}
			if again := NewGuard(p, nil).Decide(tc.r); again != d {
				t.Fatalf("not deterministic: %+v then %+v", d, again)
			}
		})
	}
}

func TestDecideInspection(t *testing.T) {
	yes := true
	cases := []struct {
		name    string
		ceiling string
		np      *api.NetworkPolicy
		host    string
		inspect bool
	}{
		{"off by default", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, "a.com", false},
		{"request turns it on", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}, InspectTLS: &yes}, "a.com", true},
		{"ceiling turns it on", "inspect_tls = true\nallow = [\"a.com\"]", &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, "a.com", true},
		{"no_inspect the ceiling allows", "inspect_tls = true\nallow = [{ host = \"pin.com\", no_inspect = true }]", &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pin.com", NoInspect: true}}}, "pin.com", false},
		{"no_inspect rule over inspect_tls", `allow = ["pin.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pin.com", NoInspect: true}}, InspectTLS: &yes}, "pin.com", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compile(mustCeiling(t, tc.ceiling), tc.np, "", nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			d := NewGuard(p, nil).Decide(Request{Host: tc.host, Port: 443})
			if !d.Allow || d.Inspect != tc.inspect {
				t.Fatalf("decision %+v, want allowed with inspect %v", d, tc.inspect)
			}
		})
	}
}

func TestGrants(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	now := t0
	task := "Read https://docs.example.org/guide/setup.html, and never touch https://evil.com/. Then summarise."
	in := &api.Intent{Packages: []string{"requests>=2", "numpy[extra]"}, URLs: []string{"https://example.com/data.csv"},
		Git: []string{"https://github.com/org/repo.git"}}
	p, err := Compile(c, nil, task, in, fixedClock(&now))
	if err != nil {
		t.Fatal(err)
	}
	if sk := p.Skipped(); len(sk) != 1 || !strings.Contains(sk[0], "evil.com") || !strings.Contains(sk[0], "ceiling:allow") {
		t.Fatalf("skipped %v, want the task's evil.com URL refused by the ceiling", sk)
	}
	cases := []struct {
		name         string
		r            Request
		allow        bool
		rule, source string
	}{
		{"package index page", Request{Host: "pypi.org", Port: 443, Method: "GET", Path: "/simple/requests/"}, true, "grant:intent.packages:pypi.org/simple", SourcePackages},
		{"package JSON API", Request{Host: "pypi.org", Port: 443, Method: "GET", Path: "/pypi/numpy/json"}, true, "grant:intent.packages:pypi.org/pypi", SourcePackages},
		{"package files", Request{Host: "files.pythonhosted.org", Port: 443, Method: "GET", Path: "/packages/ab/cd/requests.whl"}, true, "grant:intent.packages:files.pythonhosted.org/packages", SourcePackages},
		{"package upload refused", Request{Host: "pypi.org", Port: 443, Method: "POST", Path: "/simple/requests/"}, false, "default:deny", ""},
		{"package index outside its paths", Request{Host: "pypi.org", Port: 443, Method: "GET", Path: "/account/login/"}, false, "default:deny", ""},
		{"package index connection", Request{Host: "pypi.org", Port: 443}, true, "grant:intent.packages:pypi.org/simple", SourcePackages},
		{"intent URL", Request{Host: "example.com", Port: 443, Method: "GET", Path: "/data.csv"}, true, "grant:intent.urls:example.com/data.csv", SourceURLs},
		{"package grant says what granted it", Request{Host: "pypi.org", Port: 443, Method: "HEAD", Path: "/simple/x/"}, true, "grant:intent.packages:pypi.org/simple", SourcePackages},
		{"intent URL HEAD", Request{Host: "example.com", Port: 443, Method: "HEAD", Path: "/data.csv"}, true, "grant:intent.urls:example.com/data.csv", SourceURLs},
		{"intent URL is read-only", Request{Host: "example.com", Port: 443, Method: "PUT", Path: "/data.csv"}, false, "default:deny", ""},
		{"intent URL is path-scoped", Request{Host: "example.com", Port: 443, Method: "GET", Path: "/other"}, false, "default:deny", ""},
		{"intent URL is port-scoped", Request{Host: "example.com", Port: 80, Method: "GET", Path: "/data.csv"}, false, "default:deny", ""},
		{"task URL", Request{Host: "docs.example.org", Port: 443, Method: "GET", Path: "/guide/setup.html"}, true, "grant:task:url:docs.example.org/guide/setup.html", SourceTaskURL},
		{"task URL refused by the ceiling", Request{Host: "evil.com", Port: 443, Method: "GET", Path: "/"}, false, "ceiling:allow", "ceiling"},
		{"git refs", Request{Host: "github.com", Port: 443, Method: "GET", Path: "/org/repo.git/info/refs?service=git-upload-pack"}, true, "grant:intent.git:github.com/org/repo/info/refs,/org/repo/git-upload-pack,/org/repo.git/info/refs,/org/repo.git/git-upload-pack", SourceGit},
		{"git fetch", Request{Host: "github.com", Port: 443, Method: "POST", Path: "/org/repo/git-upload-pack"}, true, "grant:intent.git:github.com/org/repo/info/refs,/org/repo/git-upload-pack,/org/repo.git/info/refs,/org/repo.git/git-upload-pack", SourceGit},
		{"git push refused", Request{Host: "github.com", Port: 443, Method: "POST", Path: "/org/repo.git/git-receive-pack"}, false, "default:deny", ""},
		{"git other repository refused", Request{Host: "github.com", Port: 443, Method: "GET", Path: "/org/other.git/info/refs"}, false, "default:deny", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := NewGuard(p, nil).Decide(tc.r)
			if d.Allow != tc.allow || d.Rule != tc.rule || d.Source != tc.source {
				t.Fatalf("Decide(%+v) = %+v; want allow %v rule %q source %q", tc.r, d, tc.allow, tc.rule, tc.source)
			}
			if d.Allow && (d.Budget != 1000 || !d.Inspect || !strings.HasPrefix(d.Reason, "allowed by ")) {
				t.Fatalf("grant decision %+v: want the ceiling's budget (1000), inspection and what granted it", d)
			}
		})
	}
	if d := NewGuard(p, nil).Decide(Request{Host: "pypi.org", Port: 443, Method: "GET", Path: "/simple/requests/"}); d.Reason != "allowed by intent.packages (requests,numpy) -> pypi.org/simple" {
		t.Fatalf("reason %q does not name the intent that granted it", d.Reason)
	}
	for _, g := range p.Grants() {
		if !strings.Contains(g, "budget 1000 bytes") || !strings.Contains(g, "until 2026-12-01T12:10:00Z") || !strings.Contains(g, "(source ") {
			t.Fatalf("grant %q does not explain its source, budget and expiry", g)
		}
	}
}

func TestGrantsInsideTheCeiling(t *testing.T) {
	c := mustCeiling(t, "allow = [{ host = \"pypi.org\", paths = [\"/simple/\"] }, \"files.pythonhosted.org\"]\ndeny = [\"files.pythonhosted.org\"]")
	// The package grants for pypi.org/pypi/ and files.pythonhosted.org are outside this ceiling.
	_, err := Compile(c, nil, "", &api.Intent{Packages: []string{"requests"}}, nil)
	if !errors.Is(err, errdefs.Forbidden) || !strings.Contains(err.Error(), "ceiling:allow:pypi.org") {
		t.Fatalf("Compile error %v, want 403 naming the ceiling rule", err)
	}
	custom := mustCeiling(t, "allow = [\"pypi.internal:8443\"]\n[grants]\npackage_indexes = [\"https://pypi.internal:8443/root/simple/\"]")
	p, err := Compile(custom, nil, "", &api.Intent{Packages: []string{"requests"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := NewGuard(p, nil).Decide(Request{Host: "pypi.internal", Port: 8443, Method: "GET", Path: "/root/simple/requests/"})
	if !d.Allow || d.Rule != "grant:intent.packages:pypi.internal:8443/root/simple" {
		t.Fatalf("configured index: %+v", d)
	}
}

func TestGrantBudgetFromRecordedBytes(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	p, err := Compile(c, nil, "", &api.Intent{URLs: []string{"https://example.com/f"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(p, nil)
	req := Request{Host: "example.com", Port: 443, Method: "GET", Path: "/f"}
	d := g.Decide(req)
	if !d.Allow || d.Budget != 1000 {
		t.Fatalf("first decision %+v", d)
	}
	g.Record(api.NetworkEvent{Host: "example.com", Rule: d.Rule, BytesOut: 100, BytesIn: 600, Verdict: api.VerdictAllowed})
	g.Record(api.NetworkEvent{Host: "other", Rule: "allow:other", BytesIn: 5000, Verdict: api.VerdictAllowed})
	if d = g.Decide(req); !d.Allow || d.Budget != 300 {
		t.Fatalf("after 700 bytes: %+v, want 300 left", d)
	}
	g.Record(api.NetworkEvent{Host: "example.com", Rule: d.Rule, BytesIn: 300, Verdict: api.VerdictAllowed})
	if d = g.Decide(req); d.Allow || !strings.Contains(d.Reason, "budget of 1000 bytes is spent") || d.Rule != "grant:intent.urls:example.com/f" {
		t.Fatalf("after the budget: %+v", d)
	}
	// A swapped-in policy with the same grant keeps what it spent.
	g.Swap(p)
	if d = g.Decide(req); d.Allow {
		t.Fatalf("after a swap: %+v", d)
	}
}

func TestGrantExpiry(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	now := t0
	p, err := Compile(c, nil, "see https://example.com/a", nil, fixedClock(&now))
	if err != nil {
		t.Fatal(err)
	}
	g := NewGuard(p, nil)
	req := Request{Host: "example.com", Port: 443, Method: "GET", Path: "/a"}
	now = t0.Add(9 * time.Minute)
	if d := g.Decide(req); !d.Allow {
		t.Fatalf("before expiry: %+v", d)
	}
	now = t0.Add(10 * time.Minute)
	if d := g.Decide(req); d.Allow || !strings.Contains(d.Reason, "expired at 2026-12-01T12:10:00Z") {
		t.Fatalf("after expiry: %+v", d)
	}
}

func TestFlowRuleAfterDLP(t *testing.T) {
	cases := []struct {
		name     string
		ceiling  string
		np       *api.NetworkPolicy
		r        Request
		tainted  bool
		allow    bool
		rule     string
		inspects bool
	}{
		{"write before a finding", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, Request{Host: "a.com", Port: 443, Method: "POST", Path: "/"}, false, true, "allow:a.com", false},
		{"POST after a finding", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, Request{Host: "a.com", Port: 443, Method: "POST", Path: "/"}, true, false, "flow:dlp", false},
		{"PUT after a finding", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, Request{Host: "a.com", Port: 443, Method: "PUT", Path: "/"}, true, false, "flow:dlp", false},
		{"PATCH after a finding", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, Request{Host: "a.com", Port: 443, Method: "PATCH", Path: "/"}, true, false, "flow:dlp", false},
		{"DELETE after a finding", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, Request{Host: "a.com", Port: 443, Method: "DELETE", Path: "/"}, true, false, "flow:dlp", false},
		{"GET after a finding", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, Request{Host: "a.com", Port: 443, Method: "GET", Path: "/"}, true, true, "allow:a.com", true},
		{"connections get inspected after a finding", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, Request{Host: "a.com", Port: 443}, true, true, "allow:a.com", true},
		{"uninspectable connection after a finding", `allow = ["a.com"]`, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com", NoInspect: true}}}, Request{Host: "a.com", Port: 443}, true, false, "flow:dlp", false},
		{"policy allows writes after a finding", "allow_writes_after_dlp = true\nallow = [\"a.com\"]", &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}, AllowWritesAfterDLP: true}, Request{Host: "a.com", Port: 443, Method: "POST", Path: "/"}, true, true, "allow:a.com", false},
		{"ceiling permits but the policy did not ask", "allow_writes_after_dlp = true\nallow = [\"a.com\"]", &api.NetworkPolicy{Allow: []api.HostRule{{Host: "a.com"}}}, Request{Host: "a.com", Port: 443, Method: "POST", Path: "/"}, true, false, "flow:dlp", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compile(mustCeiling(t, tc.ceiling), tc.np, "", nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			g := NewGuard(p, nil)
			if tc.tainted {
				g.Record(api.NetworkEvent{Host: "a.com", Verdict: api.VerdictRedacted, Detectors: []string{"card"}})
				if !g.Tainted() {
					t.Fatal("an event with detectors did not taint the guard")
				}
			}
			d := g.Decide(tc.r)
			if d.Allow != tc.allow || d.Rule != tc.rule || d.Allow && d.Inspect != tc.inspects {
				t.Fatalf("Decide = %+v; want allow %v rule %q inspect %v", d, tc.allow, tc.rule, tc.inspects)
			}
		})
	}
}

func TestSecrets(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	p, err := Compile(c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "api.example.com"}, {Host: "pypi.org"}},
		Secrets: []api.SecretRule{{Host: "api.example.com", Header: "Authorization", Value: "Bearer ${API_TOKEN}"}, {Host: "pypi.org", Header: "X-Key", Value: "${LITERAL}-${LITERAL}"}}}, "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := p.Secrets("api.example.com")
	if len(got) != 1 || got[0].Value != "Bearer tok-123" || got[0].Header != "Authorization" || got[0].Name != "API_TOKEN" {
		t.Fatalf("secrets for api.example.com: %+v", got)
	}
	if got := p.Secrets("pypi.org"); len(got) != 1 || got[0].Value != "s3cr3t-s3cr3t" {
		t.Fatalf("secrets for pypi.org: %+v", got)
	}
	if got := p.Secrets("example.com"); len(got) != 0 {
		t.Fatalf("secrets for another host: %+v", got)
	}
	if v := p.SecretValues(); len(v) != 2 {
		t.Fatalf("secret values %v", v)
	}
	// An env secret whose variable is unset fails clearly, naming the variable, not the value.
	c.LookupEnv = func(string) (string, bool) { return "", false }
	_, err = Compile(c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "api.example.com"}},
		Secrets: []api.SecretRule{{Host: "api.example.com", Header: "Authorization", Value: "${API_TOKEN}"}}}, "", nil, nil)
	if !errors.Is(err, errdefs.Unavailable) || !strings.Contains(err.Error(), "AGENTBOX_TEST_TOKEN") {
		t.Fatalf("unset env secret: %v", err)
	}
}

func TestPolicyAccessors(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	p, err := Compile(c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "internal.corp"}}, DLP: api.DLPRedact, DLPResponses: true}, "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.DLP() != api.DLPRedact || !p.DLPResponses() || len(p.RulePacks()) != 1 {
		t.Fatalf("dlp %q responses %v packs %v", p.DLP(), p.DLPResponses(), p.RulePacks())
	}
	if !p.RangeAllowed(netip.MustParseAddr("10.1.200.7")) || p.RangeAllowed(netip.MustParseAddr("10.2.0.1")) || p.RangeAllowed(netip.MustParseAddr("127.0.0.1")) {
		t.Fatal("RangeAllowed does not follow allow_cidrs")
	}
	if !p.RangeAllowed(netip.MustParseAddr("::ffff:10.1.0.1")) {
		t.Fatal("RangeAllowed does not unmap IPv4-mapped addresses")
	}
	var nilp *Policy
	if !nilp.Offline() || nilp.DLP() != api.DLPBlock || nilp.RangeAllowed(netip.MustParseAddr("10.1.0.1")) || nilp.Secrets("a") != nil {
		t.Fatal("a nil policy is not offline and closed")
	}
	if p2, _ := Compile(c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}}, "", nil, nil); p2.DLP() != api.DLPLog {
		t.Fatalf("ceiling default DLP: %q", p2.DLP())
	}
}

// TestGuardConcurrent: the data plane calls a Guard from a goroutine per connection while a PATCH
// swaps its policy and a run drains it (run with -race).
func TestGuardConcurrent(t *testing.T) {
	c := mustCeiling(t, testCeiling)
	open, err := Compile(c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}}, "", &api.Intent{URLs: []string{"https://example.com/f"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var sunk atomicCount
	g := NewGuard(open, func(api.NetworkEvent) { sunk.add() })
	var wg sync.WaitGroup
	drained := make(chan int, 1)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				d := g.Decide(Request{Host: "example.com", Port: 443, Method: "GET", Path: "/f"})
				g.Record(api.NetworkEvent{Host: d.Host, Rule: d.Rule, Verdict: d.Verdict, BytesIn: 1})
				if i == 0 && j%50 == 0 {
					g.Swap(open)
				}
			}
		}(i)
	}
	go func() {
		n := 0
		for k := 0; k < 100; k++ {
			n += len(g.Drain())
		}
		drained <- n
	}()
	wg.Wait()
	total := <-drained + len(g.Drain())
	if total != 1600 || sunk.get() != 1600 {
		t.Fatalf("drained %d, sink %d; want every one of 1600 events once", total, sunk.get())
	}
	// The grant's 1000-byte budget was spent along the way; every byte recorded counted.
	if d := g.Decide(Request{Host: "example.com", Port: 443, Method: "GET", Path: "/f"}); d.Allow || !strings.Contains(d.Reason, "budget") {
		t.Fatalf("after 1600 bytes of a 1000-byte budget: %+v", d)
	}
}

type atomicCount struct {
	mu sync.Mutex
	n  int
}

func (a *atomicCount) add() { a.mu.Lock(); a.n++; a.mu.Unlock() }
func (a *atomicCount) get() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

// BenchmarkDecide is the cost of one decision the proxy asks for per request (a grant among rules).
func BenchmarkDecide(b *testing.B) {
	c := mustCeiling(b, testCeiling)
	p, err := Compile(c, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}, {Host: "*.github.com"}, {Host: "api.example.com"}}},
		"see https://docs.example.org/guide/", &api.Intent{Packages: []string{"requests"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	g := NewGuard(p, nil)
	r := Request{Host: "Files.PythonHosted.org.", Port: 443, Method: "GET", Path: "/packages/ab/cd/requests-2.32.0-py3-none-any.whl"}
	b.ReportAllocs()
	for b.Loop() {
		if d := g.Decide(r); !d.Allow {
			b.Fatal(d)
		}
	}
}
