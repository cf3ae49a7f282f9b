package netpolicy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

// FuzzDecide compiles a policy the fuzzer writes (allow and deny hosts, one bounded rule, a task) under
// testCeiling and checks each decision against the ceiling read independently of the matcher: what
// the ceiling denies, or does not allow, is never allowed, and neither is a write after a DLP
// finding.
func FuzzDecide(f *testing.F) {
	f.Add("pypi.org,*.github.com", "gist.github.com", "GET", "/v1/", "see https://example.com/x", "PyPI.org.", 443, "GET", "/simple/", false, false)
	f.Add("api.example.com", "", "POST", "/v1/", "", "api.example.com", 443, "POST", "/v1/../admin", false, true)
	f.Add("10.1.2.0/24", "", "", "", "", "0x0a.1.2.3", 443, "", "", false, false)
	f.Add("*.github.com", "", "", "", "", "x.evil.github.com.", 443, "", "", true, false)
	f.Add("bank.example", "", "", "", "", "[bank.example]", 443, "", "", false, false)
	f.Add("pypi.org:22,example.com:8443", "", "", "", "", "pypi.org", 22, "", "", false, false)
	f.Add("internal.corp", "", "", "", "https://169.254.169.254/latest", "2852039166", 80, "GET", "/latest", false, false)
	c := mustCeiling(f, testCeiling)
	f.Fuzz(func(t *testing.T, allow, denyHosts, method, ruleP, task, host string, port int, reqMethod, reqPath string, dns, tainted bool) {
		np := &api.NetworkPolicy{}
		for _, h := range strings.Split(allow, ",") {
			np.Allow = append(np.Allow, api.HostRule{Host: h})
		}
		if method != "" || ruleP != "" {
			np.Allow = append(np.Allow, api.HostRule{Host: "api.example.com", Methods: []string{method}, Paths: []string{ruleP}})
		}
		if denyHosts != "" {
			for _, h := range strings.Split(denyHosts, ",") {
				np.Deny = append(np.Deny, api.HostRule{Host: h})
			}
		}
		p, err := Compile(c, np, task, nil, nil)
		if err != nil {
			return
		}
		g := NewGuard(p, nil)
		if tainted {
			g.Record(api.NetworkEvent{Verdict: api.VerdictBlockedDLP, Detectors: []string{"aws-access-key"}})
		}
		r := Request{Host: host, Port: port, Method: reqMethod, Path: reqPath, DNS: dns}
		d := g.Decide(r)
		if !d.Allow {
			if d.Verdict != api.VerdictDenied || d.Rule == "" || d.Reason == "" {
				t.Fatalf("denial not explained: %+v", d)
			}
			return
		}
		if c, err := Canonical(host); err != nil || c != d.Host {
			t.Fatalf("allowed %q as %q, but its canonical form is %q, %v", host, d.Host, c, err)
		}
		if a, err := netip.ParseAddr(d.Host); err == nil {
			if !netip.MustParsePrefix("10.1.0.0/16").Contains(a) {
				t.Fatalf("allowed address %s outside the ceiling's allow_cidrs (%+v)", a, d)
			}
		} else {
			ceilingHosts := []string{"pypi.org", "files.pythonhosted.org", "github.com", "example.com", "docs.example.org",
				"pinned.example.net", "api.example.com", "bank.example", "internal.corp"}
			if !slices.Contains(ceilingHosts, d.Host) && !strings.HasSuffix(d.Host, ".github.com") {
				t.Fatalf("allowed %q, which the ceiling does not allow (%+v)", d.Host, d)
			}
			if strings.HasSuffix(d.Host, ".evil.github.com") {
				t.Fatalf("allowed %q, which the ceiling denies (%+v)", d.Host, d)
			}
			if !dns && port != 0 && port != 80 && port != 443 && !(d.Host == "example.com" && port == 8443) {
				t.Fatalf("allowed %q on port %d, which the ceiling does not allow (%+v)", d.Host, port, d)
			}
		}
		if dns || reqMethod == "" {
			return
		}
		if tainted && slices.Contains([]string{"POST", "PUT", "PATCH", "DELETE"}, reqMethod) {
			t.Fatalf("allowed %s after a DLP finding (%+v)", reqMethod, d)
		}
		if d.Host == "api.example.com" {
			cp, err := cleanRequestPath(reqPath)
			if err != nil || reqMethod != "GET" && reqMethod != "POST" || cp != "/v1" && !strings.HasPrefix(cp, "/v1/") {
				t.Fatalf("allowed %s %q on api.example.com, outside the ceiling rule (%+v)", reqMethod, reqPath, d)
			}
		}
		if strings.Contains(reqPath, "..") && !strings.ContainsAny(reqPath, "?#") {
			for _, seg := range strings.Split(reqPath, "/") {
				if seg == ".." {
					t.Fatalf("allowed a dot-dot path %q (%+v)", reqPath, d)
				}
			}
		}
	})
}
