package server

import (
	"errors"
	"net/http"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

var errNoFleet = errdefs.With(errdefs.NotFound, errors.New("this server is a single host, not part of a fleet (serve with --cluster, docs/cluster.md)"))

// listHosts is GET /v1/hosts: the fleet's live hosts with their tiers, capacity and load.
func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Fleet == nil {
		s.fail(w, r, errNoFleet)
		return
	}
	writeJSON(w, http.StatusOK, s.cfg.Fleet.Hosts(r.Context()))
}

// drainHost is POST /v1/hosts/{id}/drain (admin keys): the host takes no more placements; its
// sessions answer until they end.
func (s *Server) drainHost(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Fleet == nil {
		s.fail(w, r, errNoFleet)
		return
	}
	if !s.keys.empty() && !dispatch.TenantOf(r.Context()).Admin {
		s.fail(w, r, errdefs.With(errdefs.Forbidden, errors.New("draining a host needs an admin key")))
		return
	}
	h, err := s.cfg.Fleet.Drain(r.Context(), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, h)
}
