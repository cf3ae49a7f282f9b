package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// An MCP connection (/mcp, streamable HTTP) is placed and pinned like a session: the host that
// serves its initialize holds the connection's state (its session names, their sessions), so that
// host serves every later request of the connection, whichever host it arrives at. The connection's
// Mcp-Session-Id → host is in the sessions bucket under mcpKeyPrefix, recorded before the
// initialize is answered.

// mcpPath is where the MCP server is mounted; mcpSessionHeader names an MCP connection.
const (
	mcpPath          = "/mcp"
	mcpSessionHeader = "Mcp-Session-Id"
	mcpKeyPrefix     = "mcp-"
)

// mcpKey is the sessions bucket key of MCP connection id, or "" when id cannot be one.
func mcpKey(id string) string {
	k := mcpKeyPrefix + id
	if id == "" || !keyRE.MatchString(k) {
		return ""
	}
	return k
}

// routeMCP serves /mcp for the fleet: a new connection (a POST without Mcp-Session-Id) is placed on
// a host with room for a nano session (and the labels asked for); a request of an existing
// connection goes to the connection's host.
func (n *Node) routeMCP(next http.Handler, w http.ResponseWriter, r *http.Request, fail FailFunc) {
	id := r.Header.Get(mcpSessionHeader)
	if id == "" {
		if r.Method != http.MethodPost {
			next.ServeHTTP(w, r) // the MCP handler says what is wrong with it
			return
		}
		labels, err := ParseLabels(r.Header.Get(HeaderLabels))
		if err != nil {
			fail(w, r, fmt.Errorf("%s: %w", HeaderLabels, err))
			return
		}
		rep, err := n.place(r.Context(), kindSession, api.TierNano, labels)
		if err != nil {
			fail(w, r, err)
			return
		}
		if rep.Host == n.cfg.HostID {
			n.serveMCPLocal(next, w, r, rep.Token)
			return
		}
		n.forward(w, r, rep.Host, rep.URL, rep.Token, fail)
		return
	}
	key := mcpKey(id)
	if key == "" {
		next.ServeHTTP(w, r) // not an id this fleet gave: the MCP handler answers 404
		return
	}
	host, err := n.owner(r.Context(), key)
	if err != nil {
		fail(w, r, err)
		return
	}
	if host == "" || host == n.cfg.HostID {
		n.serveMCPLocal(next, w, r, "")
		return
	}
	h, ok := n.liveHost(r.Context(), host)
	if !ok {
		fail(w, r, errdefs.With(errdefs.NotFound, fmt.Errorf("MCP session %s is gone: %s; connect again", id, n.goneReason(host))))
		return
	}
	n.forward(w, r, host, h.URL, "", fail)
}

// serveMCPLocal serves an MCP request on this host, recording the connection a successful
// initialize opens and forgetting the one a DELETE closes.
func (n *Node) serveMCPLocal(next http.Handler, w http.ResponseWriter, r *http.Request, token string) {
	id := r.Header.Get(mcpSessionHeader)
	switch {
	case r.Method == http.MethodPost && id == "":
		w = &mcpRecorder{ResponseWriter: w, n: n, owner: dispatch.TenantOf(r.Context()).ID}
	case r.Method == http.MethodDelete && mcpKey(id) != "":
		cw := &captureWriter{ResponseWriter: w, status: http.StatusOK}
		n.serveLocal(next, cw, r, token)
		if cw.status < 300 {
			n.mu.Lock()
			delete(n.owners, mcpKey(id))
			n.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), recordTimeout)
			defer cancel()
			if err := n.forgetRecord(ctx, mcpKey(id)); err != nil {
				n.log.Warn("cluster: forgetting a closed MCP connection", "mcp_session", id, "err", err)
			}
		}
		return
	}
	n.serveLocal(next, w, r, token)
}

// mcpRecorder records the MCP connection an initialize answer names before the answer goes out,
// so that the client's next request finds it from any host.
type mcpRecorder struct {
	http.ResponseWriter
	n     *Node
	owner string
	wrote bool
}

func (m *mcpRecorder) WriteHeader(code int) {
	if !m.wrote {
		m.wrote = true
		if key := mcpKey(m.Header().Get(mcpSessionHeader)); key != "" && code < 300 {
			m.n.recordMCP(key, m.owner)
		}
	}
	m.ResponseWriter.WriteHeader(code)
}

func (m *mcpRecorder) Write(b []byte) (int, error) {
	if !m.wrote {
		m.WriteHeader(http.StatusOK)
	}
	return m.ResponseWriter.Write(b)
}

// Flush lets the MCP handler stream (server-sent events) through the recorder.
func (m *mcpRecorder) Flush() {
	if !m.wrote {
		m.WriteHeader(http.StatusOK)
	}
	http.NewResponseController(m.ResponseWriter).Flush()
}

func (m *mcpRecorder) Unwrap() http.ResponseWriter { return m.ResponseWriter }

func (n *Node) recordMCP(key, owner string) {
	ctx, cancel := context.WithTimeout(context.Background(), recordTimeout)
	defer cancel()
	b, _ := json.Marshal(sessionRecord{Host: n.cfg.HostID, Owner: owner, CreatedAt: time.Now().UTC().Format(time.RFC3339Nano)})
	if _, err := n.sess.Put(ctx, key, b); err != nil {
		n.log.Warn("cluster: recording an MCP connection's host; it answers on this host only", "key", key, "err", err)
		return
	}
	n.cacheOwner(key, n.cfg.HostID)
}
