package e2b

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/feed"
	"github.com/entersandbox/agentbox/internal/limits"
)

// codeContext is a code-interpreter context beyond a sandbox's default one: a child session.
type codeContext struct {
	id, language, cwd string
	sess              Session
}

// contextJSON is E2B's Context.
type contextJSON struct {
	ID       string `json:"id"`
	Language string `json:"language"`
	Cwd      string `json:"cwd"`
}

const homeDir = "/home/user"

func (h *Handler) jupyterRoutes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { h.health(w, r, http.StatusOK) })
	mux.HandleFunc("POST /execute", h.execute)
	mux.HandleFunc("POST /contexts", h.createContext)
	mux.HandleFunc("GET /contexts", h.listContexts)
	mux.HandleFunc("DELETE /contexts/{id}", h.deleteContext)
	mux.HandleFunc("POST /contexts/{id}/restart", h.restartContext)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, errdefs.With(errdefs.NotFound, fmt.Errorf("no code-interpreter route for %s %s", r.Method, limits.Text(r.URL.Path, 256))))
	})
	return mux
}

// checkLanguage refuses what is not Python: agentbox's sandboxes run Python only.
func checkLanguage(lang string) error {
	switch strings.ToLower(lang) {
	case "", "python", "python3":
		return nil
	}
	return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("language %q is not served: agentbox's code interpreter runs Python only", limits.Text(lang, 64)))
}

// session returns the session of the context id ("" or the sandbox id: the default context).
func (b *sandbox) context(id string) (Session, error) {
	if id == "" || id == b.id {
		return b.sess, nil
	}
	b.mu.Lock()
	c := b.contexts[id]
	b.mu.Unlock()
	if c == nil {
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("context %q not found in sandbox %q", limits.Text(id, 64), b.id))
	}
	return c.sess, nil
}

func (h *Handler) createContext(w http.ResponseWriter, r *http.Request) {
	b := sandboxOf(r.Context())
	var body struct {
		Language string `json:"language"`
		Cwd      string `json:"cwd"`
	}
	if err := decodeJSON(r, &body); err != nil {
		h.fail(w, err)
		return
	}
	if err := checkLanguage(body.Language); err != nil {
		h.fail(w, err)
		return
	}
	cwd := body.Cwd
	if cwd == "" {
		cwd = homeDir
	} else if !strings.HasPrefix(cwd, "/") {
		cwd = homeDir + "/" + cwd
	}
	if err := limits.CheckPath(cwd); err != nil {
		h.fail(w, err)
		return
	}
	tier := templates[b.template]
	if b.sess.Info().Tier == api.TierHeavy {
		tier = api.TierHeavy // a child of a sandbox that moved starts where its parent is
	}
	sess, err := h.sb.NewSession(r.Context(), h.sessionRequest(tier, b.envs))
	if err != nil {
		h.fail(w, err)
		return
	}
	if err := chdir(r.Context(), sess, cwd); err != nil {
		sess.Close()
		h.fail(w, err)
		return
	}
	c := &codeContext{id: sess.ID(), language: "python", cwd: cwd, sess: sess}
	b.mu.Lock()
	if b.killed {
		b.mu.Unlock()
		sess.Close()
		h.fail(w, errNoSandbox(b.id))
		return
	}
	b.contexts[c.id] = c
	b.mu.Unlock()
	writeJSON(w, http.StatusOK, contextJSON{ID: c.id, Language: c.language, Cwd: c.cwd})
}

func (h *Handler) listContexts(w http.ResponseWriter, r *http.Request) {
	b := sandboxOf(r.Context())
	out := []contextJSON{{ID: b.id, Language: "python", Cwd: homeDir}}
	b.mu.Lock()
	for _, c := range b.contexts {
		out = append(out, contextJSON{ID: c.id, Language: c.language, Cwd: c.cwd})
	}
	b.mu.Unlock()
	sort.Slice(out[1:], func(i, j int) bool { return out[1+i].ID < out[1+j].ID })
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) deleteContext(w http.ResponseWriter, r *http.Request) {
	b := sandboxOf(r.Context())
	id := r.PathValue("id")
	if id == b.id {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, errors.New("the default context is the sandbox itself: kill the sandbox instead")))
		return
	}
	b.mu.Lock()
	c := b.contexts[id]
	delete(b.contexts, id)
	b.mu.Unlock()
	if c == nil {
		h.fail(w, errdefs.With(errdefs.NotFound, fmt.Errorf("context %q not found in sandbox %q", limits.Text(id, 64), b.id)))
		return
	}
	c.sess.Close()
	w.WriteHeader(http.StatusNoContent)
}

// resetCode empties the interpreter's namespace and imported user modules, as a kernel restart
// would; files are kept (a restarted Jupyter kernel keeps them too).
const resetCode = `import sys as _s
for _n in [n for n in list(globals()) if not n.startswith('__')]:
    del globals()[_n]
del _n
`

func (h *Handler) restartContext(w http.ResponseWriter, r *http.Request) {
	b := sandboxOf(r.Context())
	sess, err := b.context(r.PathValue("id"))
	if err != nil {
		h.fail(w, err)
		return
	}
	if err := runQuiet(r.Context(), sess, resetCode); err != nil {
		h.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// runQuiet runs code for the layer's own bookkeeping; an exception it raises is an error.
func runQuiet(ctx context.Context, sess Session, code string) error {
	res, err := sess.Run(ctx, code, dispatch.Output{})
	if err != nil {
		return err
	}
	if res.Error != nil {
		return pyError(res.Error)
	}
	return nil
}

// pyError classifies a Python exception raised by a filesystem or bookkeeping cell.
func pyError(e *api.Error) error {
	err := fmt.Errorf("%s: %s", e.Type, firstLine(e.Message))
	switch e.Type {
	case "FileNotFoundError":
		return errdefs.With(errdefs.NotFound, err)
	case "FileExistsError":
		return errdefs.With(errdefs.Conflict, err)
	case "NotADirectoryError", "IsADirectoryError", "ValueError", "OSError":
		return errdefs.With(errdefs.InvalidArgument, err)
	case "PermissionError":
		return errdefs.With(errdefs.Forbidden, err)
	}
	return err
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// pyString is s as a Python string literal (a JSON string is one).
func pyString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// chdir makes cwd (created if missing) the working directory of a context's interpreter.
func chdir(ctx context.Context, sess Session, cwd string) error {
	code := fmt.Sprintf("import os as _os\n_os.makedirs(%[1]s, exist_ok=True)\n_os.chdir(%[1]s)\ndel _os\n", pyString(cwd))
	if err := runQuiet(ctx, sess, code); err != nil {
		return fmt.Errorf("e2b: entering the context's cwd: %w", err)
	}
	return nil
}

// executeBody is POST /execute.
type executeBody struct {
	Code      *string           `json:"code"`
	ContextID string            `json:"context_id"`
	Language  string            `json:"language"`
	EnvVars   map[string]string `json:"env_vars"`
}

// envScope sets env_vars for one execution and puts the previous values back after it.
func envScope(envs map[string]string) (set, restore string) {
	if len(envs) == 0 {
		return "", ""
	}
	j, _ := json.Marshal(envs)
	set = fmt.Sprintf("import os as _os\n_e2b_env_saved = {k: _os.environ.get(k) for k in __import__('json').loads(%[1]s)}\n_os.environ.update(__import__('json').loads(%[1]s))\ndel _os\n", pyString(string(j)))
	restore = "import os as _os\nfor _k, _v in _e2b_env_saved.items():\n    _os.environ.pop(_k, None) if _v is None else _os.environ.__setitem__(_k, _v)\ndel _os, _k, _v, _e2b_env_saved\n"
	return set, restore
}

// execute is POST /execute: the cell's output as it happens, one JSON object per line.
func (h *Handler) execute(w http.ResponseWriter, r *http.Request) {
	b := sandboxOf(r.Context())
	var body executeBody
	if err := decodeJSON(r, &body); err != nil {
		h.fail(w, err)
		return
	}
	if body.Code == nil {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, errors.New(`"code" is required`)))
		return
	}
	if body.ContextID != "" && body.Language != "" {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, errors.New("give context_id or language, not both")))
		return
	}
	if err := checkLanguage(body.Language); err != nil {
		h.fail(w, err)
		return
	}
	for k := range body.EnvVars {
		if !validEnvName(k) {
			h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("env_vars: %q is not an environment variable name", limits.Text(k, 128))))
			return
		}
	}
	sess, err := b.context(body.ContextID)
	if err != nil {
		h.fail(w, err)
		return
	}
	ctx := r.Context()
	set, restore := envScope(body.EnvVars)
	if set != "" {
		if err := runQuiet(ctx, sess, set); err != nil {
			h.fail(w, err)
			return
		}
		defer runQuiet(context.WithoutCancel(ctx), sess, restore)
	}
	st := startLines(w, h.cfg.Keepalive)
	st.line(map[string]any{"type": "number_of_executions", "execution_count": sess.Info().Cells + 1})
	now := func() string { return time.Now().UTC().Format(time.RFC3339Nano) }
	out := dispatch.Output{
		Stdout: func(text string) { st.line(map[string]any{"type": "stdout", "text": text, "timestamp": now()}) },
		Stderr: func(text string) { st.line(map[string]any{"type": "stderr", "text": text, "timestamp": now()}) },
		Output: func(o api.Output) { st.line(resultLine(o)) },
	}
	res, err := sess.Run(ctx, *body.Code, out)
	switch {
	case err != nil:
		name := "SandboxError"
		if errors.Is(err, context.DeadlineExceeded) {
			name = "TimeoutError"
		}
		st.line(map[string]any{"type": "error", "name": name, "value": err.Error(), "traceback": ""})
	case res.Error != nil:
		st.line(map[string]any{"type": "error", "name": res.Error.Type, "value": res.Error.Message, "traceback": res.Error.Traceback})
	}
	st.close(map[string]any{"type": "end_of_execution"})
}

// lines is an NDJSON response: lines are queued and written by their own goroutine, so that a slow
// client never blocks the guest (the queue is bounded by the run's output and result caps), and a
// keepalive line goes out whenever the stream has been silent for the keepalive interval.
// lines is one NDJSON answer.
type lines struct{ f *feed.Writer }

func startLines(w http.ResponseWriter, keepalive time.Duration) *lines {
	w.Header().Set("Content-Type", "application/x-ndjson")
	return &lines{f: feed.Start(w, keepalive, []byte(`{"type":"keepalive"}`+"\n"))}
}

func ndjson(v any) []byte {
	data, _ := json.Marshal(v)
	return append(data, '\n')
}

func (st *lines) line(v any) { st.f.Write(ndjson(v)) }

// close sends the last line and waits for the queue to drain.
func (st *lines) close(v any) { st.f.Close(ndjson(v)) }

// health is GET /health: 204 from envd, 200 from the code interpreter, while the sandbox's session
// lives; 502 once it is gone, which the SDKs read as a sandbox past its timeout.
func (h *Handler) health(w http.ResponseWriter, r *http.Request, ok int) {
	b := sandboxOf(r.Context())
	if _, err := h.lookup(r.Context(), b.id); err != nil {
		writeJSON(w, http.StatusBadGateway, errorBody{Code: http.StatusBadGateway, Message: err.Error()})
		return
	}
	w.WriteHeader(ok)
}
