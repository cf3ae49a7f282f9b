package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/limits"
)

// The shell at a step: GET /ui/ws/sessions/{id}/shell?step=N opens a websocket; the browser's first
// message carries its key (a browser cannot set headers on a websocket). The console forks the
// session at step N (the current step when N is absent) and then
//   - on nano runs each complete input as a cell of the fork: a Python line REPL, whose inputs
//     continue over lines after a ":" until an empty line, as Python's own REPL does;
//   - on heavy starts bash in the fork as a background shell command and writes each line to its
//     stdin, sending what it prints as it comes.
//
// Closing the socket closes the fork, unless the browser sent {"type":"keep"} first.

// shellMsg is one websocket message, both ways.
type shellMsg struct {
	// Type: from the browser auth (Key), line (Data), interrupt (Ctrl+C: drop the input being typed),
	// keep; to it ready (Session, Tier, Prompt),
	// output (Data), prompt (Prompt), kept (Session), error (Data).
	Type    string `json:"type"`
	Key     string `json:"key,omitempty"`
	Data    string `json:"data,omitempty"`
	Session string `json:"session,omitempty"`
	Tier    string `json:"tier,omitempty"`
	Prompt  string `json:"prompt,omitempty"`
}

// shellIdle closes a shell nobody typed in for this long.
const shellIdle = 30 * time.Minute

// maxShellLine caps one line the browser sends.
const maxShellLine = 256 << 10

func (c *Console) shell(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	stepParam := r.URL.Query().Get("step")
	// The server's read and write timeouts are deadlines on the connection, which outlive the hijack:
	// a shell is open as long as its user types.
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})
	conn, err := websocket.Accept(w, r, nil) // refuses an Origin that is not r.Host's
	if err != nil {
		c.log.Warn("console: shell websocket refused", "err", err)
		return
	}
	conn.SetReadLimit(maxShellLine + 4096)
	// The request's context lasts until this handler returns, or until the server shuts down.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	sh := &shellSession{c: c, conn: conn, from: r}
	err = sh.serve(ctx, id, stepParam)
	if err != nil && !isClosed(err) {
		c.log.Info("console: shell ended", "session", id, "err", err)
		wsjson.Write(ctx, conn, shellMsg{Type: "error", Data: err.Error()})
		conn.Close(websocket.StatusPolicyViolation, limits.Text(err.Error(), 120))
		return
	}
	conn.Close(websocket.StatusNormalClosure, "")
}

func isClosed(err error) bool {
	s := websocket.CloseStatus(err)
	return s == websocket.StatusNormalClosure || s == websocket.StatusGoingAway
}

type shellSession struct {
	c    *Console
	conn *websocket.Conn
	from *http.Request // the upgrade request, its Authorization header replaced by the browser's key
	fork api.Session
	kept bool
}

func (sh *shellSession) read(ctx context.Context) (shellMsg, error) {
	rctx, cancel := context.WithTimeout(ctx, shellIdle)
	defer cancel()
	var m shellMsg
	err := wsjson.Read(rctx, sh.conn, &m)
	return m, err
}

func (sh *shellSession) send(ctx context.Context, m shellMsg) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return wsjson.Write(wctx, sh.conn, m)
}

// request is an API request on the shell's behalf, with the browser's key and the shell's context.
func (sh *shellSession) request(ctx context.Context) *http.Request {
	return sh.from.WithContext(ctx)
}

func (sh *shellSession) serve(ctx context.Context, id, stepParam string) error {
	auth, err := sh.read(ctx)
	if err != nil {
		return err
	}
	if auth.Type != "auth" {
		return errors.New(`the shell's first message must be {"type":"auth","key":...}`)
	}
	from := sh.from.Clone(ctx)
	from.Header.Del("Authorization")
	if auth.Key != "" {
		from.Header.Set("Authorization", "Bearer "+auth.Key)
	}
	sh.from = from
	req := sh.request(ctx)
	step := -1
	if stepParam != "" {
		if step, err = strconv.Atoi(stepParam); err != nil || step < 0 {
			return fmt.Errorf("step %q: want a step number", limits.Text(stepParam, 32))
		}
	} else {
		var list api.StepList
		if err := sh.c.getJSON(req, sessionPath(id, "steps"), nil, &list); err != nil {
			return shellAPIError("listing the steps", err, noSteps)
		}
		step = list.Current
	}
	if err := sh.forkStep(ctx, id, step); err != nil {
		return shellAPIError(fmt.Sprintf("forking step %d", step), err, noSteps)
	}
	defer func() {
		if sh.kept {
			return
		}
		// Discard the fork, also when the browser went away (ctx may be done: bounded on its own).
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := sh.c.do(sh.request(dctx), apiCall{method: http.MethodDelete, path: sessionPath(sh.fork.ID)}); err != nil {
			sh.c.log.Warn("console: closing a shell's fork", "session", sh.fork.ID, "err", err)
		}
	}()
	if sh.fork.Tier == api.TierHeavy {
		return sh.bash(ctx, step)
	}
	return sh.repl(ctx, step)
}

// shellAPIError says what failed; missing, for an API without the route, names what the server lacks.
// forkBusyWait bounds how long the shell waits for a busy session to fork it: a session answers 409
// while a cell or another request holds it (a heavy checkpoint after a cell can take a second).
const forkBusyWait = 20 * time.Second

// forkStep forks step of session id into sh.fork, trying again while the session is busy.
func (sh *shellSession) forkStep(ctx context.Context, id string, step int) error {
	deadline := time.Now().Add(forkBusyWait)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		err := sh.c.sendJSON(sh.request(ctx), http.MethodPost, sessionPath(id, "fork"), api.ForkRequest{Step: step}, &sh.fork)
		var ae *apiError
		if err == nil || !errors.As(err, &ae) || ae.status != http.StatusConflict || time.Now().Add(wait).After(deadline) {
			return err
		}
		if err := sh.send(ctx, shellMsg{Type: "output", Data: "session busy, waiting to fork…\r\n"}); err != nil {
			return err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func shellAPIError(what string, err error, missing string) error {
	var ae *apiError
	if errors.As(err, &ae) {
		if noTimeTravel(err) {
			return fmt.Errorf("%s: this server has no %s", what, missing)
		}
		return fmt.Errorf("%s: %s", what, ae.message)
	}
	return fmt.Errorf("%s: %w", what, err)
}

const (
	noSteps    = "time travel (the steps and fork API), so there is no shell at a step"
	noCommands = "shell commands (POST /v1/sessions/{id}/commands), so a heavy session has no shell"
)

// handleKeep answers a keep message; it reports whether m was one.
func (sh *shellSession) handleKeep(ctx context.Context, m shellMsg) (bool, error) {
	if m.Type != "keep" {
		return false, nil
	}
	sh.kept = true
	return true, sh.send(ctx, shellMsg{Type: "kept", Session: sh.fork.ID})
}

const (
	promptPS1 = ">>> "
	promptPS2 = "... "
)

// repl is the nano shell: Python inputs run as cells of the fork.
func (sh *shellSession) repl(ctx context.Context, step int) error {
	if err := sh.send(ctx, shellMsg{Type: "ready", Session: sh.fork.ID, Tier: string(sh.fork.Tier), Prompt: promptPS1,
		Data: fmt.Sprintf("Python in %s, a fork of step %d. Each input runs as a cell of the fork.\r\n", sh.fork.ID, step)}); err != nil {
		return err
	}
	var block []string
	for {
		m, err := sh.read(ctx)
		if err != nil {
			return err
		}
		if kept, err := sh.handleKeep(ctx, m); kept || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		if m.Type == "interrupt" {
			block = nil // like Python's REPL: the unfinished input is dropped
			if err := sh.send(ctx, shellMsg{Type: "prompt", Prompt: promptPS1}); err != nil {
				return err
			}
			continue
		}
		if m.Type != "line" {
			continue
		}
		line := m.Data
		if len(block) == 0 && strings.TrimSpace(line) == "" {
			if err := sh.send(ctx, shellMsg{Type: "prompt", Prompt: promptPS1}); err != nil {
				return err
			}
			continue
		}
		opens := strings.HasSuffix(strings.TrimRight(line, " \t"), ":") || strings.HasSuffix(line, "\\")
		if len(block) > 0 && strings.TrimSpace(line) != "" || opens {
			block = append(block, line)
			if err := sh.send(ctx, shellMsg{Type: "prompt", Prompt: promptPS2}); err != nil {
				return err
			}
			continue
		}
		code := line
		if len(block) > 0 {
			code = strings.Join(block, "\n") + "\n"
			block = nil
		}
		out, err := sh.runCell(ctx, code)
		if err != nil {
			out = "error: " + err.Error() + "\n"
		}
		if err := sh.send(ctx, shellMsg{Type: "output", Data: terminalText(out)}); err != nil {
			return err
		}
		if err := sh.send(ctx, shellMsg{Type: "prompt", Prompt: promptPS1}); err != nil {
			return err
		}
	}
}

// runCell runs code in the fork and returns what a REPL prints: stdout, stderr, the traceback, the
// final expression's value.
func (sh *shellSession) runCell(ctx context.Context, code string) (string, error) {
	var res api.Result
	if err := sh.c.sendJSON(sh.request(ctx), http.MethodPost, sessionPath(sh.fork.ID, "run"), api.SessionRunRequest{Code: code}, &res); err != nil {
		return "", shellAPIError("running", err, noSteps)
	}
	var b strings.Builder
	b.WriteString(res.Stdout)
	b.WriteString(res.Stderr)
	if res.Error != nil {
		if res.Error.Traceback != "" && !strings.Contains(res.Stderr, res.Error.Traceback) {
			b.WriteString(res.Error.Traceback)
		} else if res.Stderr == "" {
			b.WriteString(res.Error.Type + ": " + res.Error.Message + "\n")
		}
	}
	if m := res.MainResult(); m != nil {
		b.WriteString(m.Text() + "\n")
	}
	return b.String(), nil
}

// terminalText turns newlines into the CR LF a terminal wants.
func terminalText(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// bashQuiet is how long the heavy shell waits, after a line, for bash to stop printing before it
// shows the prompt again (a bash without a terminal prints none of its own).
const bashQuiet = 150 * time.Millisecond

// bashEvent is one event of the followed bash: output, or its end (done, with its final state).
type bashEvent struct {
	text string
	done bool
	cmd  api.Command
	err  error
}

// bash is the heavy shell: bash in the fork as a background command, lines to its stdin, its output
// followed as it comes (GET .../commands/{pid} as an event stream).
func (sh *shellSession) bash(ctx context.Context, step int) error {
	var cmd api.Command
	if err := sh.c.sendJSON(sh.request(ctx), http.MethodPost, sessionPath(sh.fork.ID, "commands"),
		api.CommandRequest{Cmd: "/bin/bash", Background: true, Env: map[string]string{"TERM": "dumb"}}, &cmd); err != nil {
		return shellAPIError("starting bash", err, noCommands)
	}
	cmdPath := sessionPath(sh.fork.ID, "commands", strconv.Itoa(cmd.PID))
	follow, err := newAPIRequest(ctx, sh.from, apiCall{method: http.MethodGet, path: cmdPath, accept: "text/event-stream"})
	if err != nil {
		return err
	}
	st, err := sh.c.openStream(follow)
	if err != nil {
		return shellAPIError("following bash", err, noCommands)
	}
	defer st.Close()
	if err := sh.send(ctx, shellMsg{Type: "ready", Session: sh.fork.ID, Tier: string(sh.fork.Tier), Prompt: "$ ",
		Data: fmt.Sprintf("bash in %s, a fork of step %d.\r\n", sh.fork.ID, step)}); err != nil {
		return err
	}
	lines := make(chan shellMsg)
	readErr := make(chan error, 1)
	go func() {
		for {
			m, err := sh.read(ctx)
			if err != nil {
				readErr <- err
				return
			}
			select {
			case lines <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	events := make(chan bashEvent)
	go func() {
		for {
			event, data, ok := st.Next()
			var ev bashEvent
			switch {
			case !ok:
				ev = bashEvent{done: true, err: errors.New("the API ended bash's output stream")}
			case event == "stdout" || event == "stderr":
				var t struct{ Text string }
				json.Unmarshal([]byte(data), &t)
				ev = bashEvent{text: t.Text}
			case event == "result":
				ev.done = true
				json.Unmarshal([]byte(data), &ev.cmd)
			case event == "error":
				ev = bashEvent{done: true, err: answerError(http.StatusInternalServerError, []byte(data))}
			default:
				continue
			}
			select {
			case events <- ev:
			case <-ctx.Done():
				return
			}
			if ev.done {
				return
			}
		}
	}()
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	prompt := false // a line was sent: prompt again once bash has been quiet for bashQuiet
	for {
		select {
		case err := <-readErr:
			return err
		case m := <-lines:
			if kept, err := sh.handleKeep(ctx, m); kept || err != nil {
				if err != nil {
					return err
				}
				continue
			}
			if m.Type == "interrupt" { // the line typed is dropped in the browser; bash is not signalled
				if err := sh.send(ctx, shellMsg{Type: "prompt", Prompt: "$ "}); err != nil {
					return err
				}
				continue
			}
			if m.Type == "line" {
				if err := sh.c.sendJSON(sh.request(ctx), http.MethodPost, cmdPath+"/stdin", api.CommandInput{Data: m.Data + "\n"}, nil); err != nil {
					return shellAPIError("writing to bash", err, noCommands)
				}
				prompt = true
				quiet.Reset(2 * bashQuiet)
			}
		case ev := <-events:
			if ev.done {
				if ev.err != nil {
					return shellAPIError("following bash", ev.err, noCommands)
				}
				sh.send(ctx, shellMsg{Type: "output", Data: terminalText(fmt.Sprintf("\n[bash %s, exit code %d]\n", ev.cmd.State, ev.cmd.ExitCode))})
				return nil
			}
			if err := sh.send(ctx, shellMsg{Type: "output", Data: terminalText(ev.text)}); err != nil {
				return err
			}
			if prompt {
				quiet.Reset(bashQuiet)
			}
		case <-quiet.C:
			if prompt {
				if err := sh.send(ctx, shellMsg{Type: "prompt", Prompt: "$ "}); err != nil {
					return err
				}
				prompt = false
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
