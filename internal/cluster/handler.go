package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// FailFunc answers err in the API's error shape.
type FailFunc = func(w http.ResponseWriter, r *http.Request, err error)

// sessionRecord is a session's entry in the sessions bucket.
type sessionRecord struct {
	Host      string `json:"host"`
	Owner     string `json:"owner,omitempty"` // the tenant's id (a hash of its key), as on the session
	CreatedAt string `json:"created_at"`
}

// Wrap routes the API over the fleet in front of next, the host's own API (after authentication,
// which is the same on every host): new runs and sessions are placed on a host with room, session
// calls go to the session's host, the sessions list is the fleet's. A request another host
// forwarded is served by next.
func (n *Node) Wrap(next http.Handler, fail FailFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(HeaderForwarded) != "" {
			if r.URL.Path == mcpPath {
				n.serveMCPLocal(next, w, r, r.Header.Get(HeaderPlacement))
				return
			}
			n.serveLocal(next, w, r, r.Header.Get(HeaderPlacement))
			return
		}
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/run":
			n.placeAndServe(next, w, r, fail, kindRun)
		case r.Method == http.MethodPost && r.URL.Path == "/v1/sessions":
			n.placeAndServe(next, w, r, fail, kindSession)
		case r.Method == http.MethodGet && r.URL.Path == "/v1/sessions":
			n.listSessions(next, w, r)
		case strings.HasPrefix(r.URL.Path, "/v1/sessions/"):
			n.routeSession(next, w, r, fail)
		case r.URL.Path == mcpPath:
			n.routeMCP(next, w, r, fail)
		case r.Method == http.MethodGet && r.URL.Path == "/v1/audit/events":
			n.auditEvents(next, w, r, fail)
		case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/audit/reports/"):
			n.auditReport(next, w, r, fail)
		case r.Method == http.MethodGet && r.URL.Path == "/v1/audit/verify":
			n.auditVerify(next, w, r, fail)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// placementTier is the tier a run or session is placed for: heavy when asked or when it installs
// packages (only heavy can), nano otherwise (an auto run that moves to heavy later moves on its host).
func placementTier(t api.Tier, pkgs []string) (api.Tier, bool) {
	switch {
	case t == api.TierHeavy || (len(pkgs) > 0 && t != api.TierNano):
		return api.TierHeavy, true
	case t == "" || t == api.TierAuto || t == api.TierNano:
		return api.TierNano, true
	}
	return "", false
}

func (n *Node) placeAndServe(next http.Handler, w http.ResponseWriter, r *http.Request, fail FailFunc, kind string) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		fail(w, r, err) // the body limit's error answers 413
		return
	}
	r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	var probe struct {
		Tier     api.Tier `json:"tier"`
		Packages []string `json:"packages"`
	}
	if json.Unmarshal(body, &probe) != nil {
		n.serveLocal(next, w, r, "") // the host's own decoder says what is wrong with it
		return
	}
	t, ok := placementTier(probe.Tier, probe.Packages)
	if !ok {
		n.serveLocal(next, w, r, "")
		return
	}
	labels, err := ParseLabels(r.Header.Get(HeaderLabels))
	if err != nil {
		fail(w, r, fmt.Errorf("%s: %w", HeaderLabels, err))
		return
	}
	rep, err := n.place(r.Context(), kind, t, labels)
	if err != nil {
		fail(w, r, err)
		return
	}
	if rep.Host == n.cfg.HostID {
		n.serveLocal(next, w, r, rep.Token)
		return
	}
	n.forward(w, r, rep.Host, rep.URL, rep.Token, fail)
}

// serveLocal serves r on this host, counting it against the host's room and recording the sessions
// it starts.
func (n *Node) serveLocal(next http.Handler, w http.ResponseWriter, r *http.Request, token string) {
	creates := r.Method == http.MethodPost && (r.URL.Path == "/v1/sessions" || strings.HasPrefix(r.URL.Path, "/v1/sessions/") && strings.HasSuffix(r.URL.Path, "/fork"))
	isRun := r.Method == http.MethodPost && r.URL.Path == "/v1/run"
	n.mu.Lock()
	if isRun {
		n.runs++
	} else if creates {
		n.starting++
	}
	n.mu.Unlock()
	n.claim(token) // the request holds the place now
	defer func() {
		n.mu.Lock()
		if isRun {
			n.runs--
		} else if creates {
			n.starting--
		}
		n.mu.Unlock()
		n.sync()
	}()
	if !creates && !(r.Method == http.MethodDelete && sessionID(r.URL.Path) != "" && !strings.Contains(strings.TrimPrefix(r.URL.Path, "/v1/sessions/"), "/")) {
		next.ServeHTTP(w, r)
		return
	}
	cw := &captureWriter{ResponseWriter: w, status: http.StatusOK}
	next.ServeHTTP(cw, r)
	if cw.status >= 300 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	if r.Method == http.MethodDelete {
		id := sessionID(r.URL.Path)
		if err := n.forgetRecord(ctx, id); err != nil {
			n.log.Warn("cluster: forgetting a session", "session", id, "err", err)
		}
		return
	}
	var created struct {
		ID    string `json:"id"`
		Owner string `json:"owner"`
	}
	if err := json.Unmarshal(cw.body.Bytes(), &created); err != nil || !keyRE.MatchString(created.ID) {
		n.log.Warn("cluster: a created session's id is unreadable; it answers on this host only", "err", err)
		return
	}
	b, _ := json.Marshal(sessionRecord{Host: n.cfg.HostID, Owner: created.Owner, CreatedAt: time.Now().UTC().Format(time.RFC3339Nano)})
	if _, err := n.sess.Put(ctx, created.ID, b); err != nil {
		n.log.Warn("cluster: recording a session's host; it answers on this host only", "session", created.ID, "err", err)
	}
	n.cacheOwner(created.ID, n.cfg.HostID)
}

// captureWriter keeps the status and the first bytes of a small answer (a created session).
type captureWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
	wrote  bool
}

func (c *captureWriter) WriteHeader(code int) {
	if !c.wrote {
		c.status, c.wrote = code, true
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *captureWriter) Write(b []byte) (int, error) {
	c.wrote = true
	if c.body.Len() < 64<<10 {
		c.body.Write(b[:min(len(b), 64<<10-c.body.Len())])
	}
	return c.ResponseWriter.Write(b)
}

func (c *captureWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// keyRE is what a KV key may be (session ids are far narrower).
var keyRE = labelRE

// sessionID is the {id} of a /v1/sessions/{id}... path; empty when there is none.
func sessionID(path string) string {
	rest, ok := strings.CutPrefix(path, "/v1/sessions/")
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	return id
}

func (n *Node) cacheOwner(id, host string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.owners) >= 100_000 {
		clear(n.owners) // a cache: the bucket has them all
	}
	n.owners[id] = host
}

// owner returns the host of session id, or "" when the fleet has no record of it (it is then
// looked for here, which answers 404 for an id it does not know either).
func (n *Node) owner(ctx context.Context, id string) (string, error) {
	n.mu.Lock()
	h, ok := n.owners[id]
	n.mu.Unlock()
	if ok {
		return h, nil
	}
	if !keyRE.MatchString(id) {
		return "", nil
	}
	e, err := n.getSession(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", errdefs.With(errdefs.Unavailable, fmt.Errorf("looking up session %s's host: %w", id, err))
	}
	var rec sessionRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return "", fmt.Errorf("session %s's record: %w", id, err)
	}
	t := dispatch.TenantOf(ctx)
	if !t.Admin && rec.Owner != t.ID {
		return "", nil // not this tenant's: the local answer is the same 404 as for any unknown id
	}
	n.cacheOwner(id, rec.Host)
	return rec.Host, nil
}

func (n *Node) routeSession(next http.Handler, w http.ResponseWriter, r *http.Request, fail FailFunc) {
	id := sessionID(r.URL.Path)
	host, err := n.owner(r.Context(), id)
	if err != nil {
		fail(w, r, err)
		return
	}
	if host == "" || host == n.cfg.HostID {
		n.serveLocal(next, w, r, "")
		return
	}
	h, ok := n.liveHost(r.Context(), host)
	if !ok && n.repl != nil {
		n.restoreAndServe(next, w, r, fail, id, host)
		return
	}
	if !ok {
		fail(w, r, errdefs.With(errdefs.NotFound, fmt.Errorf("session %s is gone: %s", id, n.goneReason(host))))
		return
	}
	n.forward(w, r, host, h.URL, "", fail)
}

type forwardKey struct{}

type forwardTo struct {
	host, token string
	url         *url.URL
	fail        FailFunc
}

// proxy forwards requests to other hosts, streaming answers (SSE) as they come.
type proxy struct {
	rp *httputil.ReverseProxy
}

func newProxy(n *Node, rt http.RoundTripper) *proxy {
	if rt == nil {
		rt = http.DefaultTransport.(*http.Transport).Clone()
	}
	return &proxy{rp: &httputil.ReverseProxy{
		Transport:     rt,
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(n.log.Handler(), slog.LevelWarn), // a stream cut by a host's death

		Rewrite: func(pr *httputil.ProxyRequest) {
			to := pr.In.Context().Value(forwardKey{}).(*forwardTo)
			pr.SetURL(to.url)
			pr.Out.Header.Set(HeaderForwarded, n.cfg.HostID)
			if to.token != "" {
				pr.Out.Header.Set(HeaderPlacement, to.token)
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Del("X-Request-Id") // this host's id is already on the answer
			resp.Header.Set("X-Agentbox-Host", resp.Request.Context().Value(forwardKey{}).(*forwardTo).host)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the client left
			}
			to := r.Context().Value(forwardKey{}).(*forwardTo)
			n.log.Warn("cluster: forwarding", "to", to.host, "path", r.URL.Path, "err", err)
			to.fail(w, r, errdefs.With(errdefs.Unavailable, fmt.Errorf("host %s did not complete the request (%v): it may have left the fleet; retry", to.host, err)))
		},
	}}
}

func (n *Node) forward(w http.ResponseWriter, r *http.Request, host, base, token string, fail FailFunc) {
	u, err := url.Parse(base)
	if err != nil {
		fail(w, r, errdefs.With(errdefs.Unavailable, fmt.Errorf("host %s's URL %q: %w", host, base, err)))
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), forwardKey{}, &forwardTo{host: host, token: token, url: u, fail: fail}))
	n.proxy.rp.ServeHTTP(w, r)
}

// listSessions answers the fleet's sessions the caller sees: this host's and each live host's,
// asked in parallel with the caller's key. A host that does not answer is named in
// X-Agentbox-Hosts-Missing.
func (n *Node) listSessions(next http.Handler, w http.ResponseWriter, r *http.Request) {
	type part struct {
		host     string
		sessions []api.Session
		err      error
	}
	live := n.liveHosts()
	delete(live, n.cfg.HostID)
	parts := make([]part, 0, len(live)+1)
	var mu sync.Mutex
	var wg sync.WaitGroup
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	if rec.Code != http.StatusOK {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
		return
	}
	var mine api.SessionList
	json.Unmarshal(rec.Body.Bytes(), &mine)
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	client := &http.Client{Transport: n.proxy.rp.Transport}
	for id, h := range live {
		wg.Go(func() {
			list, err := n.remoteSessions(ctx, client, h.URL, r.Header.Get("Authorization"))
			mu.Lock()
			parts = append(parts, part{host: id, sessions: list, err: err})
			mu.Unlock()
		})
	}
	wg.Wait()
	out := api.SessionList{Sessions: mine.Sessions}
	var missing []string
	for _, p := range parts {
		if p.err != nil {
			n.log.Warn("cluster: listing a host's sessions", "to", p.host, "err", p.err)
			missing = append(missing, p.host)
			continue
		}
		out.Sessions = append(out.Sessions, p.sessions...)
	}
	if out.Sessions == nil {
		out.Sessions = []api.Session{}
	}
	if len(missing) > 0 {
		w.Header().Set("X-Agentbox-Hosts-Missing", strings.Join(missing, ","))
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func (n *Node) remoteSessions(ctx context.Context, client *http.Client, base, auth string) ([]api.Session, error) {
	b, err := n.getFrom(ctx, client, base, "/v1/sessions", auth)
	if err != nil {
		return nil, err
	}
	var list api.SessionList
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	return list.Sessions, nil
}
