package e2b

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// Templates: what each E2B template id starts.
const (
	// TemplateCodeInterpreter is @e2b/code-interpreter's default: a Python session on tier auto
	// (nano, moving to heavy when a cell needs it).
	TemplateCodeInterpreter = "code-interpreter-v1"
	// TemplateBase is the e2b SDK's default: commands need a shell, which only heavy has.
	TemplateBase = "base"
)

var templates = map[string]api.Tier{TemplateCodeInterpreter: api.TierAuto, TemplateBase: api.TierHeavy}

// sandbox is one E2B sandbox: an agentbox session (its default code context), the child sessions of
// its other contexts, and what E2B keeps beside them.
type sandbox struct {
	id       string // the session's id
	template string
	token    string // envdAccessToken
	tenant   dispatch.Tenant
	started  time.Time
	metadata map[string]string
	envs     map[string]string
	sess     Session

	mu       sync.Mutex
	deadline time.Time               // guarded by mu
	timer    *time.Timer             // kills the sandbox at deadline; guarded by mu
	contexts map[string]*codeContext // the contexts beyond the default one; guarded by mu
	tags     map[string]int          // process tags given at Start, to pids; guarded by mu
	killed   bool                    // guarded by mu
}

func (h *Handler) apiRoutes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /sandboxes", h.create)
	mux.HandleFunc("POST /v2/sandboxes", h.create)
	mux.HandleFunc("GET /sandboxes", h.listV1)
	mux.HandleFunc("GET /v2/sandboxes", h.list)
	mux.HandleFunc("GET /sandboxes/{id}", h.get)
	mux.HandleFunc("DELETE /sandboxes/{id}", h.delete)
	mux.HandleFunc("POST /sandboxes/{id}/timeout", h.setTimeout)
	mux.HandleFunc("POST /sandboxes/{id}/refreshes", h.refresh)
	mux.HandleFunc("POST /sandboxes/{id}/connect", h.connect)
	mux.HandleFunc("POST /v2/sandboxes/{id}/connect", h.connect)
	mux.HandleFunc("POST /sandboxes/{id}/fork", h.fork)
	mux.HandleFunc("POST /sandboxes/{id}/snapshots", h.snapshot)
	mux.HandleFunc("GET /snapshots", h.listSnapshots)
	mux.HandleFunc("DELETE /templates/{id}", h.deleteSnapshot)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	notSupported := map[string]string{
		"POST /sandboxes/{id}/pause":  "pausing a sandbox",
		"POST /sandboxes/{id}/resume": "resuming a paused sandbox",
		"GET /sandboxes/{id}/metrics": "sandbox metrics",
		"GET /sandboxes/metrics":      "sandbox metrics",
		"GET /sandboxes/{id}/logs":    "sandbox logs",
		"GET /v2/sandboxes/{id}/logs": "sandbox logs",
		"PUT /sandboxes/{id}/network": "changing a sandbox's network",
	}
	for pattern, what := range notSupported {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			h.fail(w, unsupported(what, "agentbox sessions have no E2B pause, snapshot, fork, metrics, logs or network API; agentbox's own API has session network policies (PATCH /v1/sessions/{id}/network)"))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, errdefs.With(errdefs.NotFound, fmt.Errorf("no E2B control-plane route for %s %s", r.Method, limits.Text(r.URL.Path, 256))))
	})
	return mux
}

// The create body (NewSandbox); fields agentbox cannot honour are refused, not ignored.
type createBody struct {
	TemplateID          string            `json:"templateID"`
	Timeout             *int              `json:"timeout"` // seconds
	Metadata            map[string]string `json:"metadata"`
	EnvVars             map[string]string `json:"envVars"`
	AutoPause           bool              `json:"autoPause"`
	AllowInternetAccess *bool             `json:"allow_internet_access"`
	Network             json.RawMessage   `json:"network"`
	VolumeMounts        json.RawMessage   `json:"volumeMounts"`
	MCP                 json.RawMessage   `json:"mcp"`
	Secure              *bool             `json:"secure"`
}

func present(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s != "" && s != "null" && s != "{}" && s != "[]"
}

// Sandbox is E2B's answer to create and connect.
type sandboxJSON struct {
	SandboxID          string  `json:"sandboxID"`
	TemplateID         string  `json:"templateID"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
	Domain             *string `json:"domain"`
	Alias              string  `json:"alias,omitempty"`
}

// SandboxDetail and ListedSandbox, E2B's answers to get and list.
type detailJSON struct {
	SandboxID       string            `json:"sandboxID"`
	TemplateID      string            `json:"templateID"`
	Alias           string            `json:"alias,omitempty"`
	ClientID        string            `json:"clientID"`
	StartedAt       string            `json:"startedAt"`
	EndAt           string            `json:"endAt"`
	EnvdVersion     string            `json:"envdVersion"`
	EnvdAccessToken string            `json:"envdAccessToken,omitempty"`
	Domain          *string           `json:"domain"`
	CPUCount        int               `json:"cpuCount"`
	MemoryMB        int               `json:"memoryMB"`
	DiskSizeMB      int               `json:"diskSizeMB"`
	Metadata        map[string]string `json:"metadata"`
	State           string            `json:"state"`
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request) {
	var body createBody
	if err := decodeJSON(r, &body); err != nil {
		h.fail(w, err)
		return
	}
	b, err := h.newSandbox(r.Context(), body)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, h.sandboxJSON(b))
}

// lifetime checks a requested E2B timeout (seconds); nil is the default.
func (h *Handler) lifetime(seconds *int) (time.Duration, error) {
	if seconds == nil {
		return h.cfg.DefaultTimeout, nil
	}
	d := time.Duration(*seconds) * time.Second
	if *seconds <= 0 || d > h.cfg.MaxTimeout {
		return 0, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("timeout %d s is outside 1 to %d s", *seconds, int(h.cfg.MaxTimeout/time.Second)))
	}
	return d, nil
}

func (h *Handler) newSandbox(ctx context.Context, body createBody) (*sandbox, error) {
	if body.TemplateID == "" {
		body.TemplateID = TemplateBase // what the e2b SDK means by no template
	}
	tier, ok := templates[body.TemplateID]
	snap := h.findSnapshot(ctx, body.TemplateID)
	if !ok && snap == nil {
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("template %q is not known to agentbox: use %q (a Python session, tier auto) or %q (the heavy tier, with a shell); custom templates are not built here", limits.Text(body.TemplateID, 128), TemplateCodeInterpreter, TemplateBase))
	}
	switch {
	case body.AutoPause:
		return nil, unsupported("autoPause (onTimeout: 'pause')", "a sandbox is killed at its timeout")
	case present(body.Network):
		// allow_internet_access is not refused: older SDKs send true on every create. The sandbox is
		// offline all the same (docs/e2b.md).
		return nil, unsupported("network rules for an E2B sandbox", "agentbox sandboxes are offline unless an agentbox network policy opens them (docs/network.md)")
	case present(body.VolumeMounts):
		return nil, unsupported("volume mounts", "agentbox has no volumes")
	case present(body.MCP):
		return nil, unsupported("an MCP gateway in the sandbox", "agentbox serves MCP itself at /mcp")
	}
	for k := range body.EnvVars {
		if !validEnvName(k) {
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("envVars: %q is not an environment variable name", limits.Text(k, 128)))
		}
	}
	life, err := h.lifetime(body.Timeout)
	if err != nil {
		return nil, err
	}
	if snap != nil {
		if len(body.EnvVars) > 0 {
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("envVars: a sandbox started from snapshot %q has the snapshot's environment", snap.id))
		}
		// A sandbox from a snapshot is a fork of the snapshotted step.
		return h.forkFrom(ctx, snap.sess, snap.step, snap.tmpl, snap.envs, body.Metadata, life)
	}
	sess, err := h.sb.NewSession(ctx, h.sessionRequest(tier, body.EnvVars))
	if err != nil {
		return nil, err
	}
	return h.register(ctx, sess, body.TemplateID, body.EnvVars, body.Metadata, life)
}

// register makes sess a sandbox of the tenant ctx acts for, killed after life.
func (h *Handler) register(ctx context.Context, sess Session, tmpl string, envs, meta map[string]string, life time.Duration) (*sandbox, error) {
	b := &sandbox{id: sess.ID(), template: tmpl, token: newToken("ea_", 16), tenant: dispatch.TenantOf(ctx),
		started: time.Now(), metadata: meta, envs: envs, sess: sess, contexts: map[string]*codeContext{}, tags: map[string]int{}}
	if b.metadata == nil {
		b.metadata = map[string]string{}
	}
	b.deadline = b.started.Add(life)
	b.timer = time.AfterFunc(life, func() { h.expire(b) })
	h.mu.Lock()
	h.boxes[b.id] = b
	h.mu.Unlock()
	return b, nil
}

// sessionRequest is the session of a sandbox or context: the sandbox's envs are its environment
// (of its cells and its commands), and its idle TTL is the longest lifetime, so that the sandbox's
// own deadline, which a timeout call moves, is what ends it.
func (h *Handler) sessionRequest(tier api.Tier, envs map[string]string) api.SessionRequest {
	return api.SessionRequest{Tier: tier, TTLSeconds: h.ttl(), Env: envs}
}

func (h *Handler) ttl() int { return int(min(h.cfg.MaxTimeout, 24*time.Hour) / time.Second) }

func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func (h *Handler) sandboxJSON(b *sandbox) sandboxJSON {
	return sandboxJSON{SandboxID: b.id, TemplateID: b.template, ClientID: h.cfg.ClientID, EnvdVersion: EnvdVersion, EnvdAccessToken: b.token}
}

func (h *Handler) detail(b *sandbox, withToken bool) detailJSON {
	info := b.sess.Info()
	b.mu.Lock()
	end := b.deadline
	b.mu.Unlock()
	d := detailJSON{SandboxID: b.id, TemplateID: b.template, ClientID: h.cfg.ClientID,
		StartedAt: b.started.UTC().Format(time.RFC3339Nano), EndAt: end.UTC().Format(time.RFC3339Nano),
		EnvdVersion: EnvdVersion, CPUCount: 1, MemoryMB: info.Limits.MemoryLimitMB, Metadata: b.metadata, State: "running"}
	if withToken {
		d.EnvdAccessToken = b.token
	}
	return d
}

// lookup finds the sandbox id names for the tenant ctx acts for; a sandbox whose session is gone (its
// sandbox died, or agentbox's API closed it) is forgotten.
func (h *Handler) lookup(ctx context.Context, id string) (*sandbox, error) {
	h.mu.Lock()
	b := h.boxes[id]
	h.mu.Unlock()
	t := dispatch.TenantOf(ctx)
	if b == nil || !(t.Admin || t.ID == b.tenant.ID) {
		return nil, errNoSandbox(id)
	}
	if _, err := h.sb.Session(dispatch.WithTenant(ctx, b.tenant), b.id); err != nil {
		h.kill(b, "session gone")
		return nil, errNoSandbox(id)
	}
	return b, nil
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	b, err := h.lookup(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, h.detail(b, true))
}

func (h *Handler) delete(w http.ResponseWriter, r *http.Request) {
	b, err := h.lookup(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	h.kill(b, "client")
	w.WriteHeader(http.StatusNoContent)
}

// kill ends the sandbox: its sessions, its timer, its entry. Killing twice is not an error.
func (h *Handler) kill(b *sandbox, reason string) {
	b.mu.Lock()
	if b.killed {
		b.mu.Unlock()
		return
	}
	b.killed = true
	b.timer.Stop()
	children := make([]*codeContext, 0, len(b.contexts))
	for _, c := range b.contexts {
		children = append(children, c)
	}
	b.contexts = nil
	b.mu.Unlock()
	h.mu.Lock()
	delete(h.boxes, b.id)
	h.mu.Unlock()
	for _, c := range children {
		c.sess.Close()
	}
	b.sess.Close()
	h.log.Info("e2b sandbox killed", "id", b.id, "reason", reason)
}

// expire is the lifetime timer's: the sandbox is killed at its deadline unless a timeout call moved it.
func (h *Handler) expire(b *sandbox) {
	b.mu.Lock()
	early := time.Until(b.deadline) > 0 && !b.killed
	b.mu.Unlock()
	if early {
		return // the deadline moved after the timer fired; its Reset armed it again
	}
	h.kill(b, "timeout")
}

// setDeadline moves the sandbox's deadline to now+d; with extendOnly, only later.
func (b *sandbox) setDeadline(d time.Duration, extendOnly bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.killed {
		return
	}
	next := time.Now().Add(d)
	if extendOnly && next.Before(b.deadline) {
		return
	}
	b.deadline = next
	b.timer.Reset(d)
}

func (h *Handler) setTimeout(w http.ResponseWriter, r *http.Request) {
	h.moveDeadline(w, r, "timeout", false)
}

func (h *Handler) refresh(w http.ResponseWriter, r *http.Request) {
	h.moveDeadline(w, r, "duration", true)
}

func (h *Handler) moveDeadline(w http.ResponseWriter, r *http.Request, field string, extendOnly bool) {
	b, err := h.lookup(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	var body map[string]*int
	if err := decodeJSON(r, &body); err != nil {
		h.fail(w, err)
		return
	}
	if body[field] == nil && !extendOnly {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("%q (seconds) is required", field)))
		return
	}
	d, err := h.lifetime(body[field])
	if err != nil {
		h.fail(w, err)
		return
	}
	b.setDeadline(d, extendOnly)
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) connect(w http.ResponseWriter, r *http.Request) {
	b, err := h.lookup(r.Context(), r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	var body struct {
		Timeout *int `json:"timeout"`
	}
	if err := decodeJSON(r, &body); err != nil {
		h.fail(w, err)
		return
	}
	if body.Timeout != nil {
		d, err := h.lifetime(body.Timeout)
		if err != nil {
			h.fail(w, err)
			return
		}
		b.setDeadline(d, true) // connecting never shortens a sandbox's life
	}
	writeJSON(w, http.StatusOK, h.sandboxJSON(b))
}

// visible lists the sandboxes the tenant ctx acts for may see, oldest first; those whose session is
// gone are forgotten, not listed.
func (h *Handler) visible(ctx context.Context) []*sandbox {
	t := dispatch.TenantOf(ctx)
	h.mu.Lock()
	var all []*sandbox
	for _, b := range h.boxes {
		if t.Admin || t.ID == b.tenant.ID {
			all = append(all, b)
		}
	}
	h.mu.Unlock()
	out := all[:0]
	for _, b := range all {
		if _, err := h.sb.Session(dispatch.WithTenant(ctx, b.tenant), b.id); err != nil {
			h.kill(b, "session gone")
			continue
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b *sandbox) int {
		if c := a.started.Compare(b.started); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	return out
}

func (h *Handler) listV1(w http.ResponseWriter, r *http.Request) {
	filter, err := metadataFilter(r.URL.Query())
	if err != nil {
		h.fail(w, err)
		return
	}
	out := []detailJSON{}
	for _, b := range h.visible(r.Context()) {
		if matches(b.metadata, filter) {
			out = append(out, h.detail(b, false))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// list is GET /v2/sandboxes: filtered by state, metadata and template, ordered, paged by limit and
// an opaque nextToken (answered in X-Next-Token while more remain).
func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	filter, err := metadataFilter(q)
	if err != nil {
		h.fail(w, err)
		return
	}
	running := true
	if st := q.Get("state"); st != "" {
		running = false
		for s := range strings.SplitSeq(st, ",") {
			switch s {
			case "running":
				running = true
			case "paused":
			default:
				h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("state %q: want running or paused", limits.Text(s, 64))))
				return
			}
		}
	}
	limit := 100
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("limit %q: want 1 to 1000", limits.Text(l, 32))))
			return
		}
		limit = n
	}
	all := h.visible(r.Context())
	switch q.Get("order") {
	case "", "asc":
	case "desc":
		slices.Reverse(all)
	default:
		h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("order %q: want asc or desc", limits.Text(q.Get("order"), 32))))
		return
	}
	start := 0
	if tok := q.Get("nextToken"); tok != "" {
		id, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil {
			h.fail(w, errdefs.With(errdefs.InvalidArgument, errors.New("nextToken is not one this server gave")))
			return
		}
		// The page starts after the sandbox the token names; one killed meanwhile ends the listing
		// early rather than repeating sandboxes.
		start = len(all)
		for i, b := range all {
			if b.id == string(id) {
				start = i + 1
				break
			}
		}
	}
	tmpl := q.Get("template")
	out := []detailJSON{}
	last := ""
	more := false
	for _, b := range all[start:] {
		if !running || !matches(b.metadata, filter) || tmpl != "" && b.template != tmpl {
			continue
		}
		if len(out) == limit {
			more = true
			break
		}
		out = append(out, h.detail(b, false))
		last = b.id
	}
	if more {
		w.Header().Set("X-Next-Token", base64.RawURLEncoding.EncodeToString([]byte(last)))
	}
	writeJSON(w, http.StatusOK, out)
}

// metadataFilter reads the metadata query parameter: key=value pairs, URL-encoded as a query string
// (what the SDKs send); repeated metadata[key]=value parameters (the older form) are read too.
func metadataFilter(q url.Values) (map[string]string, error) {
	out := map[string]string{}
	for _, m := range q["metadata"] {
		pairs, err := url.ParseQuery(m)
		if err != nil {
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("metadata filter %q: %w", limits.Text(m, 256), err))
		}
		for k, v := range pairs {
			out[k] = v[len(v)-1]
		}
	}
	for k, v := range q {
		if key, ok := strings.CutPrefix(k, "metadata["); ok && strings.HasSuffix(key, "]") {
			out[strings.TrimSuffix(key, "]")] = v[len(v)-1]
		}
	}
	return out, nil
}

func matches(meta, filter map[string]string) bool {
	for k, v := range filter {
		if meta[k] != v {
			return false
		}
	}
	return true
}
