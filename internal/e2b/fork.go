package e2b

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// E2B's fork and snapshots are agentbox's time travel: a fork is a fork of the sandbox's session at
// its current step; a snapshot is the current step, pinned (kept whatever retention says), and a
// sandbox created from it is a fork of that step. A snapshot lives in this server's memory: it names
// a step of a session that may since have been killed (its pinned snapshot stays in the store), but
// not one of a server that restarted.
type snapshot struct {
	id      string
	name    string
	sess    Session // the sandbox's session, possibly closed: a fork of a pinned step needs no live parent
	step    int
	tenant  dispatch.Tenant
	from    string // the sandbox id
	tmpl    string
	envs    map[string]string
	created time.Time
}

// maxForks bounds one fork request's count.
const maxForks = 16

type forkResult struct {
	Sandbox *sandboxJSON `json:"sandbox,omitempty"`
	Error   *errorBody   `json:"error,omitempty"`
}

// errBody is err as writeError would answer it, for one entry of a list.
func (h *Handler) errBody(err error) *errorBody {
	rec := httptest.NewRecorder()
	h.fail(rec, err)
	var e errorBody
	json.Unmarshal(rec.Body.Bytes(), &e)
	return &e
}

func (h *Handler) fork(w http.ResponseWriter, r *http.Request) {
	b, err := h.lookup(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	var body struct {
		Timeout *int `json:"timeout"`
		Count   *int `json:"count"`
	}
	if err := decodeJSON(r, &body); err != nil {
		h.fail(w, err)
		return
	}
	count := 1
	if body.Count != nil {
		count = *body.Count
	}
	if count < 1 || count > maxForks {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("count %d: fork 1 to %d sandboxes at once", count, maxForks)))
		return
	}
	life, err := h.lifetime(body.Timeout)
	if err != nil {
		h.fail(w, err)
		return
	}
	step := b.sess.Steps().Current
	out := make([]forkResult, 0, count)
	for range count {
		nb, err := h.forkFrom(r.Context(), b.sess, step, b.template, b.envs, maps(b.metadata), life)
		if err != nil {
			out = append(out, forkResult{Error: h.errBody(err)})
			continue
		}
		sj := h.sandboxJSON(nb)
		out = append(out, forkResult{Sandbox: &sj})
	}
	writeJSON(w, http.StatusOK, out)
}

func maps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// forkFrom starts a sandbox in the state after step of sess, for the tenant ctx acts for.
func (h *Handler) forkFrom(ctx context.Context, sess Session, step int, tmpl string, envs, meta map[string]string, life time.Duration) (*sandbox, error) {
	child, err := sess.Fork(ctx, api.ForkRequest{Step: step, TTLSeconds: h.ttl()})
	if err != nil {
		return nil, err
	}
	return h.register(ctx, child, tmpl, envs, meta, life)
}

func (h *Handler) snapshot(w http.ResponseWriter, r *http.Request) {
	b, err := h.lookup(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	var body struct {
		Name string `json:"name"`
	}
	if err := decodeJSON(r, &body); err != nil {
		h.fail(w, err)
		return
	}
	if body.Name != "" && !validName(body.Name) {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("snapshot name %q: use letters, digits, '-', '_' and '.', at most 64", limits.Text(body.Name, 80))))
		return
	}
	step := b.sess.Steps().Current
	s := &snapshot{id: newToken("snap_", 8), name: body.Name, sess: b.sess, step: step, tenant: b.tenant, from: b.id, tmpl: b.template, envs: b.envs, created: time.Now()}
	// The name is reserved before the step is pinned: a refused duplicate must not unpin the step
	// another snapshot holds.
	h.mu.Lock()
	if s.name != "" {
		for _, o := range h.snaps {
			if o.name == s.name && o.tenant.ID == s.tenant.ID {
				h.mu.Unlock()
				h.fail(w, errdefs.With(errdefs.Conflict, fmt.Errorf("a snapshot named %q exists", s.name)))
				return
			}
		}
	}
	h.snaps[s.id] = s
	h.mu.Unlock()
	if err := b.sess.Pin(step, true); err != nil {
		h.mu.Lock()
		delete(h.snaps, s.id)
		h.mu.Unlock()
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, snapshotJSON(s))
}

func validName(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c == '-' || c == '_' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func snapshotJSON(s *snapshot) map[string]any {
	names := []string{}
	if s.name != "" {
		names = append(names, s.name)
	}
	return map[string]any{"snapshotID": s.id, "names": names, "sandboxID": s.from, "createdAt": s.created.UTC().Format(time.RFC3339Nano)}
}

// findSnapshot is the tenant's snapshot by id or name.
func (h *Handler) findSnapshot(ctx context.Context, ref string) *snapshot {
	t := dispatch.TenantOf(ctx)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.snaps {
		if (s.id == ref || s.name != "" && s.name == ref) && (t.Admin || t.ID == s.tenant.ID) {
			return s
		}
	}
	return nil
}

func (h *Handler) listSnapshots(w http.ResponseWriter, r *http.Request) {
	t := dispatch.TenantOf(r.Context())
	q := r.URL.Query()
	h.mu.Lock()
	var all []*snapshot
	for _, s := range h.snaps {
		if (t.Admin || t.ID == s.tenant.ID) && (q.Get("sandboxID") == "" || q.Get("sandboxID") == s.from) && (q.Get("name") == "" || q.Get("name") == s.name) {
			all = append(all, s)
		}
	}
	h.mu.Unlock()
	slices.SortFunc(all, func(a, b *snapshot) int { return a.created.Compare(b.created) })
	out := []map[string]any{}
	for _, s := range all {
		out = append(out, snapshotJSON(s))
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	s := h.findSnapshot(r.Context(), r.PathValue("id"))
	if s == nil {
		h.fail(w, errdefs.With(errdefs.NotFound, fmt.Errorf("template or snapshot %q not found: agentbox builds no templates", limits.Text(r.PathValue("id"), 64))))
		return
	}
	h.mu.Lock()
	delete(h.snaps, s.id)
	shared := false // another snapshot of the same step keeps it pinned
	for _, o := range h.snaps {
		shared = shared || o.sess.ID() == s.sess.ID() && o.step == s.step
	}
	h.mu.Unlock()
	if shared {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err := s.sess.Pin(s.step, false); err != nil {
		h.log.Warn("e2b: unpinning a deleted snapshot", "snapshot", s.id, "err", err)
	}
	w.WriteHeader(http.StatusNoContent)
}
