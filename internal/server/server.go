// Package server is agentbox's HTTP API (`agentbox serve`): one-shot runs, stateful sessions with
// file transfer, server-sent-event streaming, bearer keys as tenants, Prometheus metrics and the OpenAPI
// contract it is tested against (openapi.yaml, served at /openapi.yaml).
package server

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/console"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/e2b"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

//go:embed openapi.yaml
var openAPISpec []byte

// OpenAPI returns the API's OpenAPI 3.1 document.
func OpenAPI() []byte { return openAPISpec }

// Sandboxes is what the server needs to place runs and sessions (*dispatch.Dispatcher).
type Sandboxes interface {
	Run(ctx context.Context, req api.RunRequest, out dispatch.Output) (*api.RunResponse, error)
	NewSession(ctx context.Context, req api.SessionRequest) (*dispatch.Session, error)
	Session(ctx context.Context, id string) (*dispatch.Session, error)
	Sessions(ctx context.Context) []api.Session
	Stats() dispatch.Stats
}

// Config configures a Server. Zero values are the defaults given per field.
type Config struct {
	// Addr is the listen address; empty means 127.0.0.1:8080.
	Addr string
	// APIKeys are accepted bearer keys with the default limits, Keys more with roles and limits of
	// their own. Each key is a tenant: it sees only the sessions it started (others are 404), and its
	// runs are admitted within its share; admin keys see all. With no keys at all, requests are not
	// authenticated and all are one tenant, which is only allowed on a loopback address.
	APIKeys []string
	Keys    []APIKey
	// MaxBodyBytes caps a request body; zero means 64 MiB.
	MaxBodyBytes int64
	// Logger receives request logs; nil discards them.
	Logger *slog.Logger
	// MCP, when set, is mounted at /mcp (behind the same auth).
	MCP http.Handler
	// Collectors are more Prometheus series for /metrics (the egress proxy's); nil means none.
	Collectors []prometheus.Collector
	// MCPServers, when set, serves /v1/mcp/servers and /v1/mcp/tools (hosted MCP servers); nil
	// answers them 503.
	MCPServers MCPServers
	// Audit, when set, records every run, session, file transfer, package install and
	// authentication failure before the request is answered, and serves /v1/audit/* to keys with
	// the audit scope; nil means no audit log (the audit routes answer 404).
	Audit *audit.Log
	// ReadHeaderTimeout and ReadTimeout bound how long a client may take to send its headers and its
	// whole request (slow clients); zero means 10 s and 2 min.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	// Fleet, when set, makes this server one host of a fleet (docs/cluster.md): requests are placed
	// on and forwarded to the fleet's hosts, and /v1/hosts lists them; nil is a single host
	// (/v1/hosts answers 404).
	Fleet Fleet
}

// Fleet is this host's membership of a fleet (*cluster.Node).
type Fleet interface {
	// Wrap routes authenticated requests over the fleet in front of next, answering errors with fail.
	Wrap(next http.Handler, fail func(http.ResponseWriter, *http.Request, error)) http.Handler
	Hosts(ctx context.Context) api.HostList
	Drain(ctx context.Context, id string) (api.Host, error)
}

// Server serves the HTTP API.
type Server struct {
	cfg     Config
	sb      Sandboxes
	log     *slog.Logger
	metrics *metrics
	http    *http.Server
	handler http.Handler
	keys    *keyring
	// crossOrigin refuses browsers' cross-origin requests that are not GET, HEAD or OPTIONS.
	crossOrigin *http.CrossOriginProtection
	// checkHost is set on a keyless server (which New allows on loopback only): requests must then
	// be addressed to a loopback name.
	checkHost bool
	// base is every request's parent context; Shutdown cancels it when the grace period ends, so that
	// runs still going stop instead of outliving the server.
	base       context.Context
	cancelBase context.CancelCauseFunc
	handlers   atomic.Int64 // requests being handled, waited for (bounded) after base is cancelled
	// e2b serves the E2B-compatible surface under /e2b/ (and the SDK's signed /files URLs); it
	// authenticates its requests itself (docs/e2b.md).
	e2b *e2b.Handler
}

// New makes a server for sb. It refuses a non-loopback address without API keys.
func New(sb Sandboxes, cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:8080"
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 20
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = 10 * time.Second
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 2 * time.Minute
	}
	keys, err := newKeyring(cfg.APIKeys, cfg.Keys)
	if err != nil {
		return nil, err
	}
	if keys.empty() && !isLoopback(cfg.Addr) {
		return nil, fmt.Errorf("refusing to listen on %s without an API key: pass --api-key, AGENTBOX_API_KEY or --api-key-file, or listen on 127.0.0.1", cfg.Addr)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, sb: sb, log: log, keys: keys, crossOrigin: http.NewCrossOriginProtection(),
		checkHost: keys.empty()}
	s.metrics = newMetrics(sb.Stats)
	for _, c := range cfg.Collectors {
		if err := s.metrics.reg.Register(c); err != nil {
			return nil, fmt.Errorf("server: metrics: %w", err)
		}
	}
	var e2bSandboxes = e2b.FromDispatch(sb)
	if cfg.Audit != nil {
		e2bSandboxes = auditedE2B{e2bSandboxes, s}
	}
	s.e2b = e2b.New(e2bSandboxes, e2b.Config{Authenticate: s.e2bTenant, Logger: log})
	s.handler = s.routes()
	s.base, s.cancelBase = context.WithCancelCause(context.Background())
	s.http = &http.Server{
		Addr:              cfg.Addr,
		Handler:           s.handler,
		BaseContext:       func(net.Listener) context.Context { return s.base },
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Handler is the server's root handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve accepts connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ListenAndServe listens on the configured address and serves until Shutdown.
func (s *Server) ListenAndServe() error {
	l, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(l)
}

// ErrShuttingDown is the cause of the cancellation of requests still running when Shutdown's grace
// period ends; they answer 503.
var ErrShuttingDown = errdefs.With(errdefs.Unavailable, errors.New("the server is shutting down: the run was stopped at the end of the shutdown grace period"))

// handlerDrain bounds how long Shutdown waits, after cancelling the requests still running, for their
// handlers to answer (a cancelled heavy run waits for runsc kill, itself bounded).
const handlerDrain = 30 * time.Second

// Shutdown stops accepting requests and lets those in flight finish until ctx is done. Then it cancels
// them (they answer 503 with ErrShuttingDown, streams end with an error event), waits a bounded time
// for their handlers to return, and closes the connections. It returns ctx's error when the grace
// period ran out.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	s.e2b.Close()
	if err == nil {
		s.cancelBase(ErrShuttingDown)
		return nil
	}
	s.cancelBase(ErrShuttingDown)
	// Polled, not a WaitGroup: a kept-alive connection may still start a request (which fails at
	// once on the cancelled context) while this waits.
	deadline := time.Now().Add(handlerDrain)
	for s.handlers.Load() > 0 {
		if time.Now().After(deadline) {
			s.log.Warn("shutdown: requests still running after cancellation", "requests", s.handlers.Load(), "waited", handlerDrain)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.http.Close()
	return fmt.Errorf("shutting down: %w", err)
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.Handle("GET /metrics", s.metrics.handler())
	mux.HandleFunc("GET /openapi.yaml", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Write(openAPISpec)
	})
	mux.HandleFunc("POST /v1/run", s.run)
	mux.HandleFunc("POST /v1/sessions", s.createSession)
	mux.HandleFunc("GET /v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.SessionList{Sessions: s.sb.Sessions(r.Context())})
	})
	mux.HandleFunc("GET /v1/sessions/{id}", s.getSession)
	mux.HandleFunc("DELETE /v1/sessions/{id}", s.deleteSession)
	mux.HandleFunc("POST /v1/sessions/{id}/run", s.sessionRun)
	mux.HandleFunc("PATCH /v1/sessions/{id}/network", s.setNetwork)
	mux.HandleFunc("POST /v1/sessions/{id}/commands", s.sessionCommand)
	mux.HandleFunc("GET /v1/sessions/{id}/commands", s.listCommands)
	mux.HandleFunc("GET /v1/sessions/{id}/commands/{pid}", s.getCommand)
	mux.HandleFunc("POST /v1/sessions/{id}/commands/{pid}/stdin", s.commandStdin)
	mux.HandleFunc("POST /v1/sessions/{id}/commands/{pid}/kill", s.killCommand)
	mux.HandleFunc("GET /v1/sessions/{id}/files", s.listFiles)
	mux.HandleFunc("PUT /v1/sessions/{id}/files/{path...}", s.putFile)
	mux.HandleFunc("GET /v1/sessions/{id}/files/{path...}", s.getFile)
	s.stepRoutes(mux)
	mux.HandleFunc("POST /v1/mcp/servers", s.registerMCPServer)
	mux.HandleFunc("GET /v1/mcp/servers", s.listMCPServers)
	mux.HandleFunc("GET /v1/mcp/servers/{name}", s.getMCPServer)
	mux.HandleFunc("DELETE /v1/mcp/servers/{name}", s.deleteMCPServer)
	mux.HandleFunc("GET /v1/mcp/tools", s.listMCPTools)
	mux.HandleFunc("GET /v1/audit/events", s.auditEvents)
	mux.HandleFunc("GET /v1/audit/reports/{period}", s.auditReport)
	mux.HandleFunc("GET /v1/audit/verify", s.auditVerify)
	mux.HandleFunc("GET /v1/hosts", s.listHosts)
	mux.HandleFunc("POST /v1/hosts/{id}/drain", s.drainHost)
	if s.cfg.MCP != nil {
		mux.Handle("/mcp", s.keys.scopeMCP(s.cfg.MCP))
	}
	// The web console is a client of this API, called in-process with the browser's key.
	ui, err := console.New(console.Config{API: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }), Logger: s.log})
	if err != nil {
		panic(err) // the embedded templates do not parse: a build defect, caught by every test
	}
	mux.Handle("/ui", ui)
	mux.Handle("/ui/", ui)
	mux.Handle("/e2b/", s.e2b)
	mux.Handle("/files", s.e2b) // the E2B SDK's signed file URLs drop E2B_SANDBOX_URL's path

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, errdefs.With(errdefs.NotFound, fmt.Errorf("no route for %s %s", r.Method, r.URL.Path)))
	})
	if s.cfg.Fleet != nil {
		return s.middleware(s.cfg.Fleet.Wrap(mux, s.fail))
	}
	return s.middleware(mux)
}

type ctxKey int

const requestIDKey ctxKey = 0

// middleware adds the request id, auth (the key's tenant, in the context), body limits, metrics and
// a log line.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.handlers.Add(1)
		defer s.handlers.Add(-1)
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, id))
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		tenant, sc, ok := s.keys.tenant(r)
		defer func() {
			route := routeLabel(r)
			s.metrics.requests.WithLabelValues(route, fmt.Sprint(rec.status)).Inc()
			// The path is capped: headers may be up to 1 MB, and this line is logged before auth.
			s.log.Info("request", "id", id, "method", limits.Text(r.Method, 32), "path", limits.Text(r.URL.Path, 1024), "status", rec.status,
				"ms", time.Since(start).Milliseconds(), "remote", r.RemoteAddr, "tenant", tenant.ID)
		}()
		if err := s.checkOrigin(r); err != nil {
			s.fail(rec, r, err)
			return
		}
		if e2bPath(r.URL.Path) {
			// The E2B surface authenticates by API key or by a sandbox's access token, and answers
			// errors in E2B's shape.
			r.Body = http.MaxBytesReader(rec, r.Body, s.cfg.MaxBodyBytes)
			next.ServeHTTP(rec, r)
			return
		}
		// The console's pages carry no data and its fragments forward the key to this API.
		if r.URL.Path != "/healthz" && !ok && !console.IsConsolePath(r.URL.Path) {
			s.recordAuthFailure(r, "missing or wrong API key")
			rec.Header().Set("WWW-Authenticate", `Bearer realm="agentbox"`)
			s.fail(rec, r, errdefs.With(errdefs.Unauthenticated, errors.New("missing or wrong API key: send Authorization: Bearer <key>")))
			return
		}
		r = r.WithContext(dispatch.WithTenant(r.Context(), tenant))
		if err := s.checkScope(r, sc); err != nil {
			s.recordAuthFailure(r, "scope: "+err.Error())
			s.fail(rec, r, err)
			return
		}
		r.Body = http.MaxBytesReader(rec, r.Body, s.cfg.MaxBodyBytes)
		next.ServeHTTP(rec, r)
	})
}

func e2bPath(p string) bool { return strings.HasPrefix(p, "/e2b/") || p == "/files" }

// e2bTenant authenticates an E2B request: the key as the SDKs send it (X-API-KEY) or as bearer.
func (s *Server) e2bTenant(r *http.Request) (dispatch.Tenant, error) {
	t, sc, ok := s.keys.tenant(r)
	if !ok {
		s.recordAuthFailure(r, "e2b: missing or wrong API key")
		return dispatch.Tenant{}, errdefs.With(errdefs.Unauthenticated, errors.New("missing or wrong API key: set E2B_API_KEY to an agentbox API key (sent as X-API-KEY), or send Authorization: Bearer <key>"))
	}
	if sc.auditOnly {
		s.recordAuthFailure(r, "e2b: audit-only key")
		return dispatch.Tenant{}, errdefs.With(errdefs.Forbidden, errors.New("this API key is read-only audit: it may only use /v1/audit/"))
	}
	return t, nil
}

// checkOrigin refuses what a web page the user visits could send: a browser's cross-origin request
// that changes state (a no-cors POST to /v1/run needs no preflight), and, on a keyless loopback
// server, any request addressed to a name other than loopback's, which is how a DNS-rebinding page
// reaches 127.0.0.1 as its own origin and reads the answers too.
func (s *Server) checkOrigin(r *http.Request) error {
	if err := s.crossOrigin.Check(r); err != nil {
		return errdefs.With(errdefs.Forbidden, fmt.Errorf("cross-origin request refused: agentbox does not serve web pages of other sites (%w)", err))
	}
	if s.checkHost && !loopbackHost(r.Host) {
		return errdefs.With(errdefs.Forbidden, fmt.Errorf("host %q refused: a server without API keys answers only requests addressed to localhost, 127.0.0.1 or [::1] (a guard against DNS rebinding); start it with --api-key to serve other names", limits.Text(r.Host, 256)))
	}
	return nil
}

// loopbackHost reports whether a Host header names loopback: localhost, 127.0.0.0/8 or ::1, with or
// without a port.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [8]byte
	rand.Read(b[:])
	return "req_" + hex.EncodeToString(b[:])
}

// routeLabel names a request's route for metrics without unbounded values (ids, paths).
func routeLabel(r *http.Request) string {
	if r.Pattern != "" {
		return r.Pattern
	}
	return "unmatched"
}

// statusRecorder remembers the status code for logs and metrics, and passes Flush through.
type statusRecorder struct {
	http.ResponseWriter
	status  int
	written bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.written {
		r.status, r.written = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.written = true
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Flush passes through: connect-rpc's streams (the E2B surface) need the writer to be an
// http.Flusher itself, not only reachable by Unwrap.
func (r *statusRecorder) Flush() {
	r.written = true
	http.NewResponseController(r.ResponseWriter).Flush()
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	st := s.sb.Stats()
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "queue_depth": st.QueueDepth,
		"pool_ready": st.PoolReady, "sessions": st.Sessions + st.HeavySessions, "heavy": st.Heavy})
}
