package netpolicy

import (
	"net/netip"

	"github.com/entersandbox/agentbox/api"
)

// The methods below are what the egress data plane asks of the policy in force, each read once per
// connection or request so that a Swap takes effect for new ones at once.

// Secrets returns the headers to set on requests to canonical host h, values resolved.
func (g *Guard) Secrets(h string) []api.SecretRule {
	var out []api.SecretRule
	for _, s := range g.Policy().Secrets(h) {
		out = append(out, api.SecretRule{Host: s.Host, Header: s.Header, Value: s.Value})
	}
	return out
}

// SecretValues returns every brokered secret value, none of which may go to a host not its own.
func (g *Guard) SecretValues() []string { return g.Policy().SecretValues() }

// DLP returns the DLP mode in force (api.DLP*) and whether responses are scanned too.
func (g *Guard) DLP() (mode string, responses bool) {
	p := g.Policy()
	return p.DLP(), p.DLPResponses()
}

// RangeAllowed reports whether the ceiling lets the sandbox reach a although it is not public.
func (g *Guard) RangeAllowed(a netip.Addr) bool { return g.Policy().RangeAllowed(a) }
