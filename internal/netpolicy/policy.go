package netpolicy

import "github.com/entersandbox/agentbox/api"

// Policy is a compiled, immutable network policy. The zero Policy, and a nil one, is offline.
type Policy struct{}

// decide answers r; tainted reports an earlier DLP finding in the sandbox's traffic.
func (p *Policy) decide(r Request, tainted bool) Decision {
	return Decision{Verdict: api.VerdictDenied, Rule: "default:offline", Reason: "this sandbox is offline"}
}
