package agentbox

import (
	"context"
	"net/http"
	"net/url"

	"github.com/entersandbox/agentbox/api"
)

// Host is one host of a fleet of agentbox servers (docs/cluster.md).
type Host = api.Host

// HostList is the fleet's live hosts; Self is the host that answered.
type HostList = api.HostList

// Hosts lists the fleet's hosts with their tiers, capacity and load (GET /v1/hosts). A single
// server, not in a fleet, answers ErrNotFound.
func (c *Client) Hosts(ctx context.Context) (HostList, error) {
	var out HostList
	err := c.doJSON(ctx, http.MethodGet, "/v1/hosts", nil, &out)
	return out, err
}

// DrainHost stops host id ("self": the host the client talks to) from taking new runs and sessions;
// its sessions answer until they end, when its state turns "drained" (POST /v1/hosts/{id}/drain,
// admin keys).
func (c *Client) DrainHost(ctx context.Context, id string) (Host, error) {
	var out Host
	err := c.doJSON(ctx, http.MethodPost, "/v1/hosts/"+url.PathEscape(id)+"/drain", nil, &out)
	return out, err
}
