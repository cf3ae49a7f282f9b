// Package console is agentbox's web console, served by `agentbox serve` at /ui/: sessions, a run panel
// with streamed output, rich outputs, files, the time-travel timeline with a step inspector, a shell at
// any step, network events and the audit log (docs/ui.md).
//
// The console is a client of the HTTP API, called in-process: every fragment forwards the browser's
// bearer key to the API handler and renders its JSON answer as HTML. So it holds no key, adds no
// privilege, and every check of the API (keys, tenants, scopes, audit) applies to it unchanged. Pages
// are static shells (they carry no data, so they need no key); their fragments are fetched by htmx
// with the key the browser keeps in sessionStorage.
package console

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/limits"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Prefix is where the console is mounted.
const Prefix = "/ui/"

// Config configures a Console.
type Config struct {
	// API is the HTTP API the console is a client of (the server's own root handler), called
	// in-process with the browser's key. Required.
	API http.Handler
	// Logger receives the console's own errors (rendering, shell sessions); nil discards them.
	Logger *slog.Logger
}

// Console serves the web console under Prefix.
type Console struct {
	api  http.Handler
	log  *slog.Logger
	tmpl *template.Template
	mux  *http.ServeMux
}

// New makes the console.
func New(cfg Config) (*Console, error) {
	if cfg.API == nil {
		return nil, errors.New("console: Config.API is required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tmpl, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("console: templates: %w", err)
	}
	c := &Console{api: cfg.API, log: log, tmpl: tmpl, mux: http.NewServeMux()}
	c.routes()
	return c, nil
}

// IsConsolePath reports whether path is the console's: the server lets these through without a key,
// because the console forwards the browser's key to the API for everything that carries data.
func IsConsolePath(path string) bool {
	return path == strings.TrimSuffix(Prefix, "/") || strings.HasPrefix(path, Prefix)
}

func (c *Console) routes() {
	static, _ := fs.Sub(staticFS, "static")
	files := http.StripPrefix(Prefix+"static/", http.FileServerFS(static))
	c.mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
	})
	c.mux.Handle("GET /ui/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == Prefix+"static/chart.html" {
			// The chart frame runs plotly and vega on a guest's spec, sandboxed into an opaque origin
			// (no key, no API); vega compiles expressions with Function, so eval is allowed there only.
			w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src data: blob:; font-src data:; frame-ancestors 'self'")
			w.Header().Set("X-Frame-Options", "SAMEORIGIN")
		}
		w.Header().Set("Cache-Control", "no-cache")
		if serveGzipped(w, r, static, strings.TrimPrefix(r.URL.Path, Prefix+"static/")) {
			return
		}
		files.ServeHTTP(w, r)
	}))
	// Pages: shells that load their fragments with the key.
	c.mux.HandleFunc("GET /ui/{$}", c.page("sessions", func(*http.Request) string { return "/ui/f/sessions" }))
	c.mux.HandleFunc("GET /ui/s/{id}", c.page("session", func(r *http.Request) string {
		return "/ui/f/sessions/" + url.PathEscape(r.PathValue("id"))
	}))
	c.mux.HandleFunc("GET /ui/audit", c.page("audit", func(*http.Request) string { return "/ui/f/audit" }))
	// Fragments.
	c.mux.HandleFunc("GET /ui/f/sessions", c.sessionList)
	c.mux.HandleFunc("POST /ui/f/sessions", c.createSession)
	c.mux.HandleFunc("GET /ui/f/sessions/{id}", c.sessionView)
	c.mux.HandleFunc("DELETE /ui/f/sessions/{id}", c.closeSession)
	c.mux.HandleFunc("POST /ui/f/sessions/{id}/run", c.runCell)
	c.mux.HandleFunc("GET /ui/f/sessions/{id}/files", c.fileTree)
	c.mux.HandleFunc("GET /ui/f/sessions/{id}/file", c.fileView)
	c.mux.HandleFunc("GET /ui/f/sessions/{id}/download", c.download)
	c.mux.HandleFunc("POST /ui/f/sessions/{id}/upload", c.upload)
	c.mux.HandleFunc("GET /ui/f/sessions/{id}/network", c.network)
	c.mux.HandleFunc("GET /ui/f/sessions/{id}/timeline", c.timeline)
	c.mux.HandleFunc("GET /ui/f/sessions/{id}/steps/{n}", c.inspect)
	c.mux.HandleFunc("POST /ui/f/sessions/{id}/rewind", c.rewind)
	c.mux.HandleFunc("POST /ui/f/sessions/{id}/fork", c.fork)
	c.mux.HandleFunc("POST /ui/f/sessions/{id}/steps/{n}/pin", c.pin)
	c.mux.HandleFunc("GET /ui/f/audit", c.auditSearch)
	c.mux.HandleFunc("GET /ui/f/audit/report", c.auditReport)
	c.mux.HandleFunc("GET /ui/ws/sessions/{id}/shell", c.shell)
	c.mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		c.failStatus(w, r, http.StatusNotFound, fmt.Sprintf("the console has no page %s %s", limits.Text(r.Method, 16), limits.Text(r.URL.Path, 256)))
	})
}

// ServeHTTP checks the request (see checkRequest) and serves it.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Only this origin's scripts run in the console; guest HTML is shown in sandboxed frames
	// (render.go), charts in the sandboxed chart frame; the console is never framed (clickjacking).
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	if err := checkRequest(r); err != nil {
		c.failStatus(w, r, http.StatusForbidden, err.Error())
		return
	}
	c.mux.ServeHTTP(w, r)
}

// consoleHeader is the header the console's scripts send with every request that changes state. A
// cross-origin page cannot send it without a CORS preflight, which agentbox never grants: the classic
// custom-header CSRF guard, on top of the Origin and Fetch-Metadata checks.
const consoleHeader = "X-Agentbox-Console"

// checkRequest is the console's own guard against cross-site requests, wherever it is mounted (the
// server checks cross-origin writes and, when keyless, the Host against DNS rebinding before this):
//   - a request that changes state (any method but GET and HEAD) must carry consoleHeader and, when
//     the browser sends them, Sec-Fetch-Site same-origin and an Origin naming the request's Host;
//   - the shell's websocket, a GET that a page of any origin could open, must come with an Origin
//     naming the request's Host (coder/websocket checks it again) and, when sent, a same-origin
//     Sec-Fetch-Site.
//
// A rebinding page passes an Origin check (its name is the Host it sends) but holds no key: the
// browser keeps the key per origin.
func checkRequest(r *http.Request) error {
	ws := strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if !ws {
			return nil
		}
	} else if r.Header.Get(consoleHeader) == "" {
		return fmt.Errorf("refused: a console request that changes state must carry the %s header (sent by the console's own scripts; a guard against cross-site requests)", consoleHeader)
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return fmt.Errorf("refused: a cross-site request (Sec-Fetch-Site: %s) to the console", limits.Text(site, 32))
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		if ws {
			return errors.New("refused: the console's websocket needs an Origin header naming this server")
		}
		return nil // not a browser's cross-origin request (browsers send Origin on these)
	}
	u, err := url.Parse(origin)
	if err != nil || !strings.EqualFold(u.Host, r.Host) {
		return fmt.Errorf("refused: origin %q is not this console's (%s)", limits.Text(origin, 256), limits.Text(r.Host, 256))
	}
	return nil
}

// apiCall is one in-process request to the API with the browser's key.
type apiCall struct {
	method, path string
	query        url.Values
	body         io.Reader
	contentType  string
	accept       string
}

// apiAnswer is the API's answer, held whole (JSON and files are capped by the API itself).
type apiAnswer struct {
	status int
	header http.Header
	body   []byte
}

// apiError is an answer that was not 2xx: the API's own status and message.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.code, e.message) }

// recorder is the ResponseWriter the API writes a buffered answer to.
type recorder struct {
	header http.Header
	status int
	buf    bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.buf.Write(b)
}

// newAPIRequest builds the in-process request: the browser's key, address and host, the caller's
// context (so a browser that goes away cancels the work).
func newAPIRequest(ctx context.Context, from *http.Request, call apiCall) (*http.Request, error) {
	target := call.path
	if len(call.query) > 0 {
		target += "?" + call.query.Encode()
	}
	body := call.body
	if body == nil {
		body = http.NoBody // a server request always has a body
	}
	req, err := http.NewRequestWithContext(ctx, call.method, target, body)
	if err != nil {
		return nil, fmt.Errorf("console: building %s %s: %w", call.method, call.path, err)
	}
	req.Host = from.Host
	req.RemoteAddr = from.RemoteAddr
	req.RequestURI = target
	if k := from.Header.Get("Authorization"); k != "" {
		req.Header.Set("Authorization", k)
	}
	if call.contentType != "" {
		req.Header.Set("Content-Type", call.contentType)
	}
	if call.accept != "" {
		req.Header.Set("Accept", call.accept)
	}
	if id := from.Header.Get("X-Request-Id"); id != "" {
		req.Header.Set("X-Request-Id", id)
	}
	return req, nil
}

// do calls the API and returns its answer, or an *apiError for a non-2xx one.
func (c *Console) do(from *http.Request, call apiCall) (*apiAnswer, error) {
	req, err := newAPIRequest(from.Context(), from, call)
	if err != nil {
		return nil, err
	}
	rec := &recorder{header: http.Header{}}
	c.api.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	ans := &apiAnswer{status: rec.status, header: rec.header, body: rec.buf.Bytes()}
	if ans.status < 200 || ans.status > 299 {
		return ans, answerError(ans.status, ans.body)
	}
	return ans, nil
}

func answerError(status int, body []byte) *apiError {
	var eb api.ErrorBody
	e := &apiError{status: status, code: http.StatusText(status)}
	if json.Unmarshal(body, &eb) == nil && eb.Error.Message != "" {
		e.code, e.message = eb.Error.Code, eb.Error.Message
	} else {
		e.message = limits.Text(string(body), 512)
	}
	return e
}

// getJSON calls GET path and decodes the answer into v.
func (c *Console) getJSON(r *http.Request, path string, query url.Values, v any) error {
	ans, err := c.do(r, apiCall{method: http.MethodGet, path: path, query: query})
	if err != nil {
		return err
	}
	if err := json.Unmarshal(ans.body, v); err != nil {
		return fmt.Errorf("console: decoding the answer of GET %s: %w", path, err)
	}
	return nil
}

// sendJSON calls method path with body as JSON and decodes the answer into v (when not nil).
func (c *Console) sendJSON(r *http.Request, method, path string, body, v any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("console: encoding %s %s: %w", method, path, err)
	}
	ans, err := c.do(r, apiCall{method: method, path: path, body: bytes.NewReader(b), contentType: "application/json"})
	if err != nil {
		return err
	}
	if v == nil || len(ans.body) == 0 {
		return nil
	}
	if err := json.Unmarshal(ans.body, v); err != nil {
		return fmt.Errorf("console: decoding the answer of %s %s: %w", method, path, err)
	}
	return nil
}

// sessionPath is the API path of a session, or of something below it.
func sessionPath(id string, rest ...string) string {
	p := "/v1/sessions/" + url.PathEscape(id)
	for _, s := range rest {
		p += "/" + s
	}
	return p
}

// filePath is the API path of a sandbox file (absolute path) below a session's prefix.
func filePath(prefix, p string) string {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return prefix + "/" + strings.Join(parts, "/")
}
