package egress

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCollectorExportsDecisions: the proxy's decisions reach Prometheus by verdict and rule, and a
// grant's rule is cut to its source so that task texts cannot grow the series without bound.
func TestCollectorExportsDecisions(t *testing.T) {
	r := newRig(t, nil)
	g := newGuard("api.test")
	for _, u := range []string{"https://api.test/v1", "http://private.test/"} {
		resp, err := r.p.RoundTrip(context.Background(), g, must(http.NewRequest("GET", u, nil)))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
	}
	g.eventsEventually(t, 2)
	want := `# HELP agentbox_egress_decisions_total Connections and requests by verdict and the rule that decided (grants by their source).
# TYPE agentbox_egress_decisions_total counter
agentbox_egress_decisions_total{rule="allow:api.test",verdict="allowed"} 1
agentbox_egress_decisions_total{rule="default:deny",verdict="denied"} 1
`
	if err := testutil.CollectAndCompare(r.p.Collector(), strings.NewReader(want), "agentbox_egress_decisions_total"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ rule, label string }{
		{"grant:task:url:example.com/a/b", "grant:task"},
		{"grant:intent.packages:pypi.org", "grant:intent.packages"},
		{"allow:pypi.org", "allow:pypi.org"},
	} {
		if got := ruleLabel(tc.rule); got != tc.label {
			t.Errorf("ruleLabel(%q) = %q, want %q", tc.rule, got, tc.label)
		}
	}
}
