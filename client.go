package agentbox

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
)

// Client talks to an agentbox server. It is safe for concurrent use.
type Client struct {
	base *url.URL
	hc   *http.Client
	key  string
}

// ClientOption configures New.
type ClientOption func(*Client)

// WithAPIKey sends key as the bearer token.
func WithAPIKey(key string) ClientOption { return func(c *Client) { c.key = key } }

// WithHTTPClient uses hc instead of a default client (which has no overall timeout, since runs and
// streams last as long as the program does).
func WithHTTPClient(hc *http.Client) ClientOption { return func(c *Client) { c.hc = hc } }

// New returns a client for the server at baseURL, e.g. "http://127.0.0.1:8080".
func New(baseURL string, opts ...ClientOption) (*Client, error) {
	u, err := url.Parse(strings.TrimSuffix(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("agentbox: base URL %q: want http(s)://host[:port]", baseURL)
	}
	c := &Client{base: u, hc: &http.Client{}}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Error codes of the API, for errors.Is against an *APIError.
var (
	ErrInvalidArgument = errors.New("invalid_argument")
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
	ErrNotFound        = errors.New("not_found")
	ErrConflict        = errors.New("conflict")
	ErrTooLarge        = errors.New("too_large")
	ErrOverloaded      = errors.New("overloaded")
	ErrUnavailable     = errors.New("unavailable")
	ErrInternal        = errors.New("internal")
)

var errorCodes = map[string]error{
	"invalid_argument": ErrInvalidArgument, "unauthenticated": ErrUnauthenticated, "forbidden": ErrForbidden, "not_found": ErrNotFound,
	"conflict": ErrConflict, "too_large": ErrTooLarge, "overloaded": ErrOverloaded,
	"unavailable": ErrUnavailable, "internal": ErrInternal,
}

// APIError is an error answer from the server. errors.Is(err, ErrNotFound) and friends match its Code.
type APIError struct {
	Status     int
	Code       string
	Message    string
	RequestID  string
	RetryAfter time.Duration // set on overloaded (429) answers
}

func (e *APIError) Error() string {
	return fmt.Sprintf("agentbox: %s (%d %s, request %s)", e.Message, e.Status, e.Code, e.RequestID)
}

// Is matches the Err* code sentinels.
func (e *APIError) Is(target error) bool { return errorCodes[e.Code] == target }

// Callbacks receive a run's output as the program writes it.
type Callbacks struct {
	Stdout func(text string)
	Stderr func(text string)
	// Fallback is called when a nano run failed for want of something the heavy tier has and starts
	// again there; the output before it was the nano attempt's.
	Fallback func(from Tier, reason string)
	// Output is called with each rich output (the final expression's value, display(), a figure) as
	// the program makes it, in order with Stdout and Stderr.
	Output func(out Output)
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, contentType string, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, body)
	if err != nil {
		return nil, fmt.Errorf("agentbox: %w", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agentbox: %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		return nil, apiError(resp)
	}
	return resp, nil
}

func apiError(resp *http.Response) error {
	e := &APIError{Status: resp.StatusCode, RequestID: resp.Header.Get("X-Request-Id")}
	var body api.ErrorBody
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if json.Unmarshal(data, &body) == nil && body.Error.Code != "" {
		e.Code, e.Message = body.Error.Code, body.Error.Message
	} else {
		e.Code, e.Message = "internal", strings.TrimSpace(string(data))
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

func (c *Client) doJSON(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("agentbox: encoding request: %w", err)
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, path, body, ct, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("agentbox: decoding %s %s: %w", method, path, err)
	}
	return nil
}

// Run runs a program in a fresh sandbox. The program's own failure is in the result's Error; the
// returned error is for requests the server refused or could not serve.
func (c *Client) Run(ctx context.Context, req RunBody) (*RunResponse, error) {
	var out RunResponse
	if err := c.doJSON(ctx, http.MethodPost, "/v1/run", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RunStream is Run with output delivered to cb as it is written.
func (c *Client) RunStream(ctx context.Context, req RunBody, cb Callbacks) (*RunResponse, error) {
	var out RunResponse
	if err := c.stream(ctx, "/v1/run", req, cb, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Client) stream(ctx context.Context, path string, in any, cb Callbacks, out any) error {
	return c.streamAs(ctx, http.MethodPost, path, in, cb, out)
}

// streamAs is stream with the method given; in nil sends no body.
func (c *Client) streamAs(ctx context.Context, method, path string, in any, cb Callbacks, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("agentbox: encoding request: %w", err)
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, path, body, ct, "text/event-stream")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	var event string
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data.WriteString(strings.TrimPrefix(line, "data: "))
		case line == "":
			done, err := dispatch(event, data.String(), cb, out, resp)
			if done || err != nil {
				return err
			}
			event = ""
			data.Reset()
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("agentbox: reading the event stream: %w", err)
	}
	return errors.New("agentbox: the event stream ended without a result")
}

func dispatch(event, data string, cb Callbacks, out any, resp *http.Response) (done bool, err error) {
	switch event {
	case "stdout", "stderr":
		var chunk struct {
			Text string `json:"text"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return false, fmt.Errorf("agentbox: bad %s event: %w", event, err)
		}
		if f := map[string]func(string){"stdout": cb.Stdout, "stderr": cb.Stderr}[event]; f != nil {
			f(chunk.Text)
		}
	case "fallback":
		var fb struct {
			From   Tier   `json:"from"`
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal([]byte(data), &fb); err != nil {
			return false, fmt.Errorf("agentbox: bad fallback event: %w", err)
		}
		if cb.Fallback != nil {
			cb.Fallback(fb.From, fb.Reason)
		}
	case "output":
		var o Output
		if err := json.Unmarshal([]byte(data), &o); err != nil {
			return false, fmt.Errorf("agentbox: bad output event: %w", err)
		}
		if cb.Output != nil {
			cb.Output(o)
		}
	case "result":
		if err := json.Unmarshal([]byte(data), out); err != nil {
			return true, fmt.Errorf("agentbox: bad result event: %w", err)
		}
		return true, nil
	case "error":
		var body api.ErrorBody
		json.Unmarshal([]byte(data), &body)
		return true, &APIError{Status: 200, Code: body.Error.Code, Message: body.Error.Message, RequestID: resp.Header.Get("X-Request-Id")}
	}
	return false, nil
}

// Session is a sandbox on the server that keeps its interpreter between runs. It is safe for
// concurrent use, but the server runs one cell of a session at a time and answers ErrConflict to a
// second one.
type Session struct {
	c  *Client
	id string // set once, never changed: the server keeps the id when a session moves tiers

	mu   sync.Mutex
	info SessionInfo // guarded by mu; replaced as a whole by Refresh
}

// newSession decodes a session description answered by method path into a Session.
func (c *Client) newSession(ctx context.Context, method, path string, in any) (*Session, error) {
	var info SessionInfo
	if err := c.doJSON(ctx, method, path, in, &info); err != nil {
		return nil, err
	}
	if info.ID == "" {
		return nil, fmt.Errorf("agentbox: %s %s: the answer has no session id", method, path)
	}
	return &Session{c: c, id: info.ID, info: info}, nil
}

// NewSession starts a session.
func (c *Client) NewSession(ctx context.Context, req SessionRequest) (*Session, error) {
	return c.newSession(ctx, http.MethodPost, "/v1/sessions", req)
}

// ListSessions describes the open sessions of the client's API key (every key's for an admin key),
// oldest first; another key's sessions are not listed, and Session(id) for one is ErrNotFound.
func (c *Client) ListSessions(ctx context.Context) ([]SessionInfo, error) {
	var out api.SessionList
	if err := c.doJSON(ctx, http.MethodGet, "/v1/sessions", nil, &out); err != nil {
		return nil, err
	}
	return out.Sessions, nil
}

// Session attaches to an existing session by id.
func (c *Client) Session(ctx context.Context, id string) (*Session, error) {
	return c.newSession(ctx, http.MethodGet, "/v1/sessions/"+url.PathEscape(id), nil)
}

// ID is the session's id; it stays the same when a session of tier auto moves to heavy.
func (s *Session) ID() string { return s.id }

// Info is the session's description as of its creation or the last Refresh: a copy, which later
// refreshes do not change.
func (s *Session) Info() SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	info := s.info
	info.Limits.AllowedModules = slices.Clone(info.Limits.AllowedModules)
	return info
}

// Refresh reads the session's description again (its tier changes when it moves) and returns it, as
// Info does from then on.
func (s *Session) Refresh(ctx context.Context) (SessionInfo, error) {
	var info SessionInfo
	if err := s.c.doJSON(ctx, http.MethodGet, s.path(""), nil, &info); err != nil {
		return SessionInfo{}, err
	}
	s.mu.Lock()
	s.info = info
	s.mu.Unlock()
	return s.Info(), nil
}

func (s *Session) path(suffix string) string {
	return "/v1/sessions/" + url.PathEscape(s.id) + suffix
}

// Run executes code in the session; variables, imports and files persist.
func (s *Session) Run(ctx context.Context, code string) (*Result, error) {
	var out Result
	if err := s.c.doJSON(ctx, http.MethodPost, s.path("/run"), api.SessionRunRequest{Code: code}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RunStream is Run with output delivered to cb as it is written.
func (s *Session) RunStream(ctx context.Context, code string, cb Callbacks) (*Result, error) {
	var out Result
	if err := s.c.stream(ctx, s.path("/run"), api.SessionRunRequest{Code: code}, cb, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// filePath maps an absolute sandbox path onto the files endpoint (each segment escaped). The path
// is checked as the server checks it (api.CheckPath), before any request: a ".." segment would
// otherwise be cleaned away by the HTTP layer and name another file.
func (s *Session) filePath(p string) (string, error) {
	if err := api.CheckPath(p); err != nil {
		return "", fmt.Errorf("agentbox: sandbox %w (%w)", err, ErrInvalidArgument)
	}
	segs := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return s.path("/files/" + strings.Join(segs, "/")), nil
}

// Upload writes data to the absolute sandbox path p, creating parent directories.
func (s *Session) Upload(ctx context.Context, p string, data io.Reader) (*FileInfo, error) {
	path, err := s.filePath(p)
	if err != nil {
		return nil, err
	}
	resp, err := s.c.do(ctx, http.MethodPut, path, data, "application/octet-stream", "application/json")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var fi FileInfo
	if err := json.NewDecoder(resp.Body).Decode(&fi); err != nil {
		return nil, fmt.Errorf("agentbox: decoding upload answer: %w", err)
	}
	return &fi, nil
}

// Download reads the file at the absolute sandbox path p.
func (s *Session) Download(ctx context.Context, p string) ([]byte, error) {
	path, err := s.filePath(p)
	if err != nil {
		return nil, err
	}
	resp, err := s.c.do(ctx, http.MethodGet, path, nil, "", "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// ListFiles lists the directory dir ("/" when empty).
func (s *Session) ListFiles(ctx context.Context, dir string) ([]FileInfo, error) {
	if dir == "" {
		dir = "/"
	}
	var out api.FileList
	if err := s.c.doJSON(ctx, http.MethodGet, s.path("/files?dir="+url.QueryEscape(dir)), nil, &out); err != nil {
		return nil, err
	}
	return out.Files, nil
}

// SetNetwork replaces the session's network policy (PATCH /v1/sessions/{id}/network): it is in force
// for new connections at once, also while a cell runs, and replaces the grants of the session's task
// and intent too (an empty policy makes it offline). A policy beyond the server's ceiling is
// ErrForbidden, its message naming the ceiling rule, and changes nothing.
func (s *Session) SetNetwork(ctx context.Context, p NetworkPolicy) error {
	return s.c.doJSON(ctx, http.MethodPatch, s.path("/network"), p, nil)
}

// Close ends the session. Closing a session that is already gone reports ErrNotFound.
func (s *Session) Close(ctx context.Context) error {
	resp, err := s.c.do(ctx, http.MethodDelete, s.path(""), nil, "", "")
	if err != nil {
		return err
	}
	return resp.Body.Close()
}
