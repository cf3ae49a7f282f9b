package server

import (
	"context"
	"errors"
	"net/http"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// MCPServers is the registry of hosted MCP servers (*mcphost.Host). A registration belongs to the
// key that made it: that key sees, lists and deletes it, and its gateway lists its tools; an admin
// key sees and deletes every key's (as with sessions). Names are one namespace for the installation.
type MCPServers interface {
	Register(ctx context.Context, spec api.MCPServer) (api.MCPServerInfo, error)
	Get(ctx context.Context, name string) (api.MCPServerInfo, error)
	List(ctx context.Context) []api.MCPServerInfo
	Delete(ctx context.Context, name string) error
	Tools(ctx context.Context) []api.MCPTool
}

var errNoMCPHosting = errdefs.With(errdefs.Unavailable, errors.New("this server does not host MCP servers"))

func (s *Server) mcpServers(w http.ResponseWriter, r *http.Request) MCPServers {
	if s.cfg.MCPServers == nil {
		s.fail(w, r, errNoMCPHosting)
		return nil
	}
	return s.cfg.MCPServers
}

func (s *Server) registerMCPServer(w http.ResponseWriter, r *http.Request) {
	h := s.mcpServers(w, r)
	if h == nil {
		return
	}
	var spec api.MCPServer
	if err := decode(r, &spec); err != nil {
		s.fail(w, r, err)
		return
	}
	info, err := h.Register(r.Context(), spec)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

func (s *Server) listMCPServers(w http.ResponseWriter, r *http.Request) {
	if h := s.mcpServers(w, r); h != nil {
		writeJSON(w, http.StatusOK, api.MCPServerList{Servers: h.List(r.Context())})
	}
}

func (s *Server) getMCPServer(w http.ResponseWriter, r *http.Request) {
	h := s.mcpServers(w, r)
	if h == nil {
		return
	}
	info, err := h.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) deleteMCPServer(w http.ResponseWriter, r *http.Request) {
	h := s.mcpServers(w, r)
	if h == nil {
		return
	}
	if err := h.Delete(r.Context(), r.PathValue("name")); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listMCPTools(w http.ResponseWriter, r *http.Request) {
	if h := s.mcpServers(w, r); h != nil {
		writeJSON(w, http.StatusOK, api.MCPToolList{Tools: h.Tools(r.Context())})
	}
}
