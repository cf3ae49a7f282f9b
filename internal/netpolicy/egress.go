package netpolicy

import "github.com/entersandbox/agentbox/api"

// Secrets returns the headers the egress proxy sets on requests to their hosts, values resolved.
// The offline Policy has none.
// TODO(policy): serve these from the compiled Policy; the proxy (internal/egress.Guard) needs them.
func (g *Guard) Secrets() []api.SecretRule { return nil }

// DLP returns the DLP mode in force (one of api.DLP*; "" is off) and whether responses are scanned
// too. The offline Policy scans nothing, since nothing leaves.
// TODO(policy): serve these from the compiled Policy.
func (g *Guard) DLP() (mode string, responses bool) { return api.DLPOff, false }
