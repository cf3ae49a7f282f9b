package console

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/limits"
)

// render executes a template; a failure (a bug) is logged and answered 500.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, data any) {
	var buf bytes.Buffer
	if err := c.tmpl.ExecuteTemplate(&buf, name, data); err != nil {
		c.log.Error("console: rendering", "template", name, "err", err)
		c.failStatus(w, r, http.StatusInternalServerError, "the console could not render this view")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// fail answers an error as an HTML fragment with the API's status (401 makes the page ask for a key).
func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		c.failStatus(w, r, ae.status, ae.message)
		return
	}
	c.log.Error("console", "path", r.URL.Path, "err", err)
	c.failStatus(w, r, http.StatusInternalServerError, "console error: "+limits.Text(err.Error(), 1024))
}

func (c *Console) failStatus(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="agentbox"`)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<div class="error-box" role="alert" data-status="%d"><strong>%d %s</strong> %s</div>`, status, status,
		http.StatusText(status), template.HTMLEscapeString(msg))
}

// redirect sends htmx to another console page.
func redirect(w http.ResponseWriter, to string) {
	w.Header().Set("HX-Redirect", to)
	w.WriteHeader(http.StatusNoContent)
}

// page serves a shell page that loads fragment(r) with the key.
func (c *Console) page(name string, fragment func(*http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, http.StatusOK, "page", map[string]any{"Page": name, "Fragment": fragment(r)})
	}
}

// sessionInfo is api.Session plus what time travel adds to it (steps, current_step), read when
// the server has them.
type sessionInfo struct {
	api.Session
	Steps       *int `json:"steps,omitempty"`
	CurrentStep *int `json:"current_step,omitempty"`
}

// Status is what the list shows: busy until a few seconds after its last use, then idle since.
func (s sessionInfo) Status() string {
	t, err := time.Parse(time.RFC3339Nano, s.LastUsedAt)
	if err != nil {
		return "open"
	}
	if time.Since(t) < 5*time.Second {
		return "active"
	}
	return "idle " + age(s.LastUsedAt)
}

func (c *Console) sessionList(w http.ResponseWriter, r *http.Request) {
	var list struct {
		Sessions []sessionInfo `json:"sessions"`
	}
	if err := c.getJSON(r, "/v1/sessions", nil, &list); err != nil {
		c.fail(w, r, err)
		return
	}
	q := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("q")))
	tier := r.URL.Query().Get("tier")
	shown := make([]sessionInfo, 0, len(list.Sessions))
	for _, s := range list.Sessions {
		if tier != "" && string(s.Tier) != tier {
			continue
		}
		if q != "" && !strings.Contains(strings.ToLower(s.ID+" "+s.Owner+" "+string(s.Tier)+" "+s.RouteReason), q) {
			continue
		}
		shown = append(shown, s)
	}
	// Newest first: the one just started is the one wanted.
	sort.SliceStable(shown, func(i, j int) bool { return shown[i].CreatedAt > shown[j].CreatedAt })
	name := "sessions"
	if r.Header.Get("HX-Target") == "session-rows" {
		name = "session-rows"
	}
	c.render(w, r, http.StatusOK, name, map[string]any{"Sessions": shown, "Total": len(list.Sessions), "Q": q, "Tier": tier})
}

func (c *Console) createSession(w http.ResponseWriter, r *http.Request) {
	tier := r.FormValue("tier")
	switch api.Tier(tier) {
	case api.TierNano, api.TierHeavy, api.TierAuto, "":
	default:
		c.failStatus(w, r, http.StatusBadRequest, fmt.Sprintf("tier %q: want nano, heavy or auto", limits.Text(tier, 32)))
		return
	}
	var s api.Session
	if err := c.sendJSON(r, http.MethodPost, "/v1/sessions", api.SessionRequest{Tier: api.Tier(tier)}, &s); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, "/ui/s/"+url.PathEscape(s.ID))
}

func (c *Console) sessionView(w http.ResponseWriter, r *http.Request) {
	var s sessionInfo
	if err := c.getJSON(r, sessionPath(r.PathValue("id")), nil, &s); err != nil {
		c.fail(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "session", s)
}

func (c *Console) closeSession(w http.ResponseWriter, r *http.Request) {
	if _, err := c.do(r, apiCall{method: http.MethodDelete, path: sessionPath(r.PathValue("id"))}); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, "/ui/")
}

// runCell runs code in the session and streams the API's events to the browser as server-sent
// events, with rich outputs and the result rendered to HTML here: stdout and stderr ({"text"}) as
// they come, "html" for each rich output, "note" for a fallback, then "result" or "error" ({"html"}).
func (c *Console) runCell(w http.ResponseWriter, r *http.Request) {
	code := r.FormValue("code")
	body, _ := json.Marshal(api.SessionRunRequest{Code: code})
	req, err := newAPIRequest(r.Context(), r, apiCall{method: http.MethodPost, path: sessionPath(r.PathValue("id"), "run"),
		body: bytes.NewReader(body), contentType: "application/json", accept: "text/event-stream"})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	st, err := c.openStream(req)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	defer st.Close()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	send := func(event string, v any) error {
		data, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
			return err
		}
		return rc.Flush()
	}
	for {
		event, data, ok := st.Next()
		if !ok {
			return
		}
		var err error
		switch event {
		case "stdout", "stderr":
			err = send(event, json.RawMessage(data))
		case "fallback":
			var f struct{ From, Reason string }
			json.Unmarshal([]byte(data), &f)
			err = send("note", map[string]string{"text": "moved from " + f.From + ": " + f.Reason})
		case "output":
			var o api.Output
			if json.Unmarshal([]byte(data), &o) == nil {
				err = send("html", map[string]string{"html": string(renderOutput(o))})
			}
		case "result":
			var res api.Result
			if jerr := json.Unmarshal([]byte(data), &res); jerr != nil {
				err = send("error", map[string]string{"html": "<div class=\"error-box\">undecodable result: " + template.HTMLEscapeString(jerr.Error()) + "</div>"})
				break
			}
			var buf bytes.Buffer
			if terr := c.tmpl.ExecuteTemplate(&buf, "result", &res); terr != nil {
				c.log.Error("console: rendering a result", "err", terr)
			}
			err = send("result", map[string]string{"html": buf.String()})
		case "error":
			var eb api.ErrorBody
			json.Unmarshal([]byte(data), &eb)
			err = send("error", map[string]string{"html": `<div class="error-box" role="alert"><strong>` + template.HTMLEscapeString(eb.Error.Code) + `</strong> ` + template.HTMLEscapeString(eb.Error.Message) + `</div>`})
		}
		if err != nil {
			return // the browser went away: the deferred close stops the run
		}
	}
}

// pipeWriter is the ResponseWriter a streamed API answer is read from. Only the API's goroutine writes
// to it; header and status are read by the console after started is closed, which orders them.
type pipeWriter struct {
	header  http.Header
	w       *io.PipeWriter
	status  int
	started chan struct{}
	once    bool
}

func (p *pipeWriter) Header() http.Header { return p.header }
func (p *pipeWriter) start(code int) {
	if !p.once {
		p.once, p.status = true, code
		close(p.started)
	}
}
func (p *pipeWriter) WriteHeader(code int) { p.start(code) }
func (p *pipeWriter) Write(b []byte) (int, error) {
	p.start(http.StatusOK)
	return p.w.Write(b)
}

// Flush is a no-op: the pipe hands every write over at once.
func (p *pipeWriter) Flush() {}

// apiStream is a server-sent-event answer of the API, read as it is written.
type apiStream struct {
	pr   *io.PipeReader
	sc   *bufio.Scanner
	done chan struct{} // closed when the API's handler returned
}

// openStream sends req (with Accept: text/event-stream) to the API and returns its event stream, or
// the API's error when it answered without one. The request's context bounds the call; Close ends it.
func (c *Console) openStream(req *http.Request) (*apiStream, error) {
	pr, pw := io.Pipe()
	sw := &pipeWriter{header: http.Header{}, w: pw, started: make(chan struct{})}
	st := &apiStream{pr: pr, done: make(chan struct{})}
	go func() {
		defer close(st.done)
		c.api.ServeHTTP(sw, req)
		sw.start(http.StatusOK)
		pw.Close()
	}()
	<-sw.started
	if sw.status != http.StatusOK || !strings.HasPrefix(sw.header.Get("Content-Type"), "text/event-stream") {
		data, _ := io.ReadAll(io.LimitReader(pr, 1<<20))
		st.Close()
		if sw.status >= 200 && sw.status < 300 {
			return nil, &apiError{status: http.StatusBadGateway, code: "bad_gateway", message: "the API answered without a stream"}
		}
		return nil, answerError(sw.status, data)
	}
	st.sc = bufio.NewScanner(pr)
	st.sc.Buffer(make([]byte, 64<<10), 256<<20) // one event holds a whole result
	return st, nil
}

// Next returns the next event; ok is false at the end of the stream.
func (st *apiStream) Next() (event, data string, ok bool) {
	for st.sc.Scan() {
		line := st.sc.Text()
		if v, found := strings.CutPrefix(line, "event: "); found {
			event = v
			continue
		}
		if d, found := strings.CutPrefix(line, "data: "); found {
			return event, d, true
		}
	}
	return "", "", false
}

// Close stops reading (the API's next write fails, which ends its handler) and waits for the handler.
func (st *apiStream) Close() {
	st.pr.CloseWithError(errors.New("console: the stream's reader went away"))
	<-st.done
}

// stepQuery is the optional ?step=N of the file views: files at that step instead of now.
func stepQuery(r *http.Request) (int, bool, error) {
	s := r.URL.Query().Get("step")
	if s == "" {
		return 0, false, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("step %q: want a step number (0 or more)", limits.Text(s, 32))
	}
	return n, true, nil
}

func (c *Console) fileTree(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	step, atStep, err := stepQuery(r)
	if err != nil {
		c.failStatus(w, r, http.StatusBadRequest, err.Error())
		return
	}
	data := map[string]any{"ID": id}
	if atStep {
		var d api.StepDetail
		if err := c.getJSON(r, sessionPath(id, "steps", strconv.Itoa(step)), nil, &d); err != nil {
			c.fail(w, r, err)
			return
		}
		data["StepQ"], data["Files"] = strconv.Itoa(step), d.Files
	} else {
		dir := r.URL.Query().Get("dir")
		if dir == "" {
			dir = "/"
		}
		var list api.FileList
		if err := c.getJSON(r, sessionPath(id, "files"), url.Values{"dir": {dir}}, &list); err != nil {
			c.fail(w, r, err)
			return
		}
		data["Dir"], data["Files"] = list.Dir, list.Files
		if dir != "/" {
			data["Up"] = path.Dir(strings.TrimSuffix(dir, "/"))
		}
	}
	c.render(w, r, http.StatusOK, "files", data)
}

// readFile reads a sandbox file, now or at a step.
func (c *Console) readFile(r *http.Request) (string, []byte, error) {
	id, p := r.PathValue("id"), r.URL.Query().Get("path")
	if !strings.HasPrefix(p, "/") {
		return p, nil, &apiError{status: http.StatusBadRequest, code: "invalid_argument", message: fmt.Sprintf("path %q: want an absolute sandbox path", limits.Text(p, 256))}
	}
	step, atStep, err := stepQuery(r)
	if err != nil {
		return p, nil, &apiError{status: http.StatusBadRequest, code: "invalid_argument", message: err.Error()}
	}
	prefix := sessionPath(id, "files")
	if atStep {
		prefix = sessionPath(id, "steps", strconv.Itoa(step), "files")
	}
	ans, err := c.do(r, apiCall{method: http.MethodGet, path: filePath(prefix, p)})
	if err != nil {
		return p, nil, err
	}
	return p, ans.body, nil
}

func (c *Console) fileView(w http.ResponseWriter, r *http.Request) {
	p, data, err := c.readFile(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	v := map[string]any{"ID": r.PathValue("id"), "Path": p, "Size": int64(len(data)), "Step": r.URL.Query().Get("step")}
	ext := strings.ToLower(path.Ext(p))
	switch {
	case imageTypes[ext] != "":
		// A data: URL of an image type we chose: an <img> never runs what it shows (SVG scripts included).
		v["Image"] = template.URL("data:" + imageTypes[ext] + ";base64," + base64.StdEncoding.EncodeToString(data))
	case (ext == ".csv" || ext == ".tsv") && utf8.Valid(data):
		rd := csv.NewReader(bytes.NewReader(data))
		rd.FieldsPerRecord = -1
		rd.LazyQuotes = true
		if ext == ".tsv" {
			rd.Comma = '\t'
		}
		var rows [][]string
		for len(rows) <= maxCSVRows {
			rec, err := rd.Read()
			if err != nil {
				break
			}
			rows = append(rows, rec)
		}
		v["CSV"], v["More"] = rows, len(rows) > maxCSVRows
		if len(rows) > maxCSVRows {
			v["CSV"] = rows[:maxCSVRows]
		}
	case utf8.Valid(data):
		text := string(data)
		if len(text) > maxInlineFile {
			text, v["More"] = limits.Text(text, maxInlineFile), true
		}
		v["Text"] = text
	default:
		v["Binary"] = true
	}
	c.render(w, r, http.StatusOK, "file", v)
}

var imageTypes = map[string]string{".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
	".svg": "image/svg+xml", ".webp": "image/webp"}

// download answers a file's bytes as an attachment (the console's script fetches it with the key).
func (c *Console) download(w http.ResponseWriter, r *http.Request) {
	p, data, err := c.readFile(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", path.Base(p)))
	w.Write(data)
}

// upload writes the form's files into the session under dir (default /home/user).
func (c *Console) upload(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := r.ParseMultipartForm(32 << 20); err != nil {
		c.failStatus(w, r, http.StatusBadRequest, "upload: want a multipart form with a file: "+err.Error())
		return
	}
	dir := r.FormValue("dir")
	if dir == "" {
		dir = "/home/user"
	}
	if !strings.HasPrefix(dir, "/") {
		c.failStatus(w, r, http.StatusBadRequest, fmt.Sprintf("upload: directory %q: want an absolute sandbox path", limits.Text(dir, 256)))
		return
	}
	fhs := r.MultipartForm.File["file"]
	if len(fhs) == 0 {
		c.failStatus(w, r, http.StatusBadRequest, "upload: choose a file first")
		return
	}
	for _, fh := range fhs {
		f, err := fh.Open()
		if err != nil {
			c.fail(w, r, fmt.Errorf("upload: opening %s: %w", fh.Filename, err))
			return
		}
		data, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			c.fail(w, r, fmt.Errorf("upload: reading %s: %w", fh.Filename, err))
			return
		}
		name := path.Base(strings.ReplaceAll(fh.Filename, "\\", "/"))
		if name == "." || name == "/" || name == ".." {
			c.failStatus(w, r, http.StatusBadRequest, fmt.Sprintf("upload: file name %q", limits.Text(fh.Filename, 256)))
			return
		}
		target := path.Join(dir, name)
		if _, err := c.do(r, apiCall{method: http.MethodPut, path: filePath(sessionPath(id, "files"), target),
			body: bytes.NewReader(data), contentType: "application/octet-stream"}); err != nil {
			c.fail(w, r, err)
			return
		}
	}
	// Only the timeline refreshes: the answer is the file tree already (of dir, not of the root).
	w.Header().Set("HX-Trigger", "steps-changed")
	r.URL.RawQuery = url.Values{"dir": {dir}}.Encode()
	c.fileTree(w, r)
}

// network shows the session's egress requests and DLP findings from the audit log.
func (c *Console) network(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	data := map[string]any{"ID": id}
	for _, k := range []struct{ key, typ string }{{"Requests", audit.TypeEgressRequest}, {"DLP", audit.TypeEgressDLP}} {
		var list api.AuditEventList
		err := c.getJSON(r, "/v1/audit/events", url.Values{"session": {id}, "type": {k.typ}, "limit": {"200"}}, &list)
		var ae *apiError
		if errors.As(err, &ae) && (ae.status == http.StatusNotFound || ae.status == http.StatusForbidden) {
			data["Unavailable"] = ae.message
			break
		}
		if err != nil {
			c.fail(w, r, err)
			return
		}
		data[k.key] = list.Events
	}
	c.render(w, r, http.StatusOK, "network", data)
}

// timelineRow is one step of the timeline with its place in the drawing.
type timelineRow struct {
	api.Step
	Lane    int  // 0 is the line the session is on; abandoned branches get lanes of their own
	Current bool // the step the session's state is at
	// MovedFrom is the tier of the step's parent when it ran on another (a move nano → heavy, or a
	// rewind back to a nano step).
	MovedFrom api.Tier
	// Forks are the open sessions forked from this step.
	Forks []string
}

// maxForkScan bounds how many younger sessions the timeline looks at for forks of a session.
const maxForkScan = 50

// forksOf finds the open sessions (of the caller's) forked from session id: those whose first step
// is a fork of it, by the step forked from. Only sessions started after id can be its forks.
func (c *Console) forksOf(r *http.Request, id string) map[int][]string {
	var self api.Session
	var list api.SessionList
	if c.getJSON(r, sessionPath(id), nil, &self) != nil || c.getJSON(r, "/v1/sessions", nil, &list) != nil {
		return nil
	}
	forks := map[int][]string{}
	scanned := 0
	for i := len(list.Sessions) - 1; i >= 0 && scanned < maxForkScan; i-- { // newest first
		s := list.Sessions[i]
		if s.ID == id || s.CreatedAt < self.CreatedAt {
			continue
		}
		scanned++
		var steps api.StepList
		if c.getJSON(r, sessionPath(s.ID, "steps"), nil, &steps) != nil || len(steps.Steps) == 0 {
			continue
		}
		if first := steps.Steps[0]; first.Kind == api.StepFork && first.ForkedFrom == id {
			forks[first.Target] = append(forks[first.Target], s.ID)
		}
	}
	return forks
}

// errNoTimeTravel is an API without the steps routes (404 with "no route"): the views say so.
func noTimeTravel(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.status == http.StatusNotFound && strings.HasPrefix(ae.message, "no route")
}

// lanes places steps: the live line (from the current step back through parents) on lane 0, each
// abandoned branch on a lane of its own, a step continuing its parent's branch on the parent's lane.
func lanes(list api.StepList) []timelineRow {
	byN := map[int]api.Step{}
	for _, s := range list.Steps {
		byN[s.N] = s
	}
	live := map[int]bool{}
	for n, seen := list.Current, 0; seen <= len(list.Steps); seen++ {
		s, ok := byN[n]
		if !ok {
			break
		}
		live[n] = true
		n = s.Parent
	}
	lane := map[int]int{}
	tip := map[int]int{} // lane → its last step
	next := 1
	rows := make([]timelineRow, 0, len(list.Steps))
	for _, s := range list.Steps {
		l := 0
		if !live[s.N] {
			if pl, ok := lane[s.Parent]; ok && pl > 0 && tip[pl] == s.Parent {
				l = pl
			} else {
				l, next = next, next+1
			}
		}
		lane[s.N], tip[l] = l, s.N
		row := timelineRow{Step: s, Lane: l, Current: s.N == list.Current}
		if p, ok := byN[s.Parent]; ok && p.Tier != s.Tier && p.Tier != "" && s.Tier != "" {
			row.MovedFrom = p.Tier
		}
		rows = append(rows, row)
	}
	return rows
}

func (c *Console) timeline(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var list api.StepList
	err := c.getJSON(r, sessionPath(id, "steps"), nil, &list)
	if noTimeTravel(err) {
		c.render(w, r, http.StatusOK, "timeline", map[string]any{"ID": id, "Unavailable": true})
		return
	}
	if err != nil {
		c.fail(w, r, err)
		return
	}
	rows := lanes(list)
	forks := c.forksOf(r, id)
	maxLane := 0
	for i, row := range rows {
		maxLane = max(maxLane, row.Lane)
		rows[i].Forks = forks[row.N]
	}
	c.render(w, r, http.StatusOK, "timeline", map[string]any{"ID": id, "Rows": rows, "Current": list.Current, "Lanes": maxLane + 1})
}

func stepNumber(r *http.Request, s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, &apiError{status: http.StatusBadRequest, code: "invalid_argument", message: fmt.Sprintf("step %q: want a step number (0 or more)", limits.Text(s, 32))}
	}
	return n, nil
}

func (c *Console) inspect(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	n, err := stepNumber(r, r.PathValue("n"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	var d api.StepDetail
	if err := c.getJSON(r, sessionPath(id, "steps", strconv.Itoa(n)), nil, &d); err != nil {
		c.fail(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "inspector", map[string]any{"ID": id, "D": d})
}

func (c *Console) rewind(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	n, err := stepNumber(r, r.FormValue("step"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if err := c.sendJSON(r, http.MethodPost, sessionPath(id, "rewind"), api.RewindRequest{Step: n}, nil); err != nil {
		c.fail(w, r, err)
		return
	}
	w.Header().Set("HX-Trigger", "session-changed")
	c.timeline(w, r)
}

func (c *Console) fork(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	n, err := stepNumber(r, r.FormValue("step"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	var s api.Session
	if err := c.sendJSON(r, http.MethodPost, sessionPath(id, "fork"), api.ForkRequest{Step: n}, &s); err != nil {
		c.fail(w, r, err)
		return
	}
	redirect(w, "/ui/s/"+url.PathEscape(s.ID))
}

func (c *Console) pin(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	n, err := stepNumber(r, r.PathValue("n"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	method := http.MethodPost
	if r.FormValue("pinned") == "false" {
		method = http.MethodDelete
	}
	if _, err := c.do(r, apiCall{method: method, path: sessionPath(id, "steps", strconv.Itoa(n), "pin")}); err != nil {
		c.fail(w, r, err)
		return
	}
	c.timeline(w, r)
}

// auditParams are the search parameters the audit page passes through to /v1/audit/events.
var auditParams = []string{"since", "until", "type", "session", "verdict", "actor", "q", "cursor"}

func (c *Console) auditSearch(w http.ResponseWriter, r *http.Request) {
	q := url.Values{"limit": {"100"}}
	form := map[string]string{}
	for _, k := range auditParams {
		if v := strings.TrimSpace(r.URL.Query().Get(k)); v != "" {
			q.Set(k, v)
			form[k] = v
		}
	}
	name := "audit"
	if r.Header.Get("HX-Target") == "audit-results" {
		name = "audit-results"
	}
	var list api.AuditEventList
	if err := c.getJSON(r, "/v1/audit/events", q, &list); err != nil {
		var ae *apiError
		if name == "audit" && errors.As(err, &ae) && ae.status != http.StatusUnauthorized {
			// The page still renders (its form), with the API's reason in place of results.
			c.render(w, r, http.StatusOK, name, map[string]any{"Form": form, "Unavailable": ae.message, "Types": auditTypes, "Verdicts": auditVerdicts})
			return
		}
		c.fail(w, r, err)
		return
	}
	next := ""
	if list.NextCursor != "" {
		nq := url.Values{}
		for k, v := range form {
			nq.Set(k, v)
		}
		nq.Set("cursor", list.NextCursor)
		next = nq.Encode()
	}
	c.render(w, r, http.StatusOK, name, map[string]any{"Form": form, "Events": list.Events, "Next": next, "Types": auditTypes, "Verdicts": auditVerdicts})
}

// auditTypes and auditVerdicts fill the search form's menus.
var (
	auditTypes    = audit.Types
	auditVerdicts = audit.Verdicts
)

func (c *Console) auditReport(w http.ResponseWriter, r *http.Request) {
	period := r.URL.Query().Get("period")
	if period == "" {
		period = "daily"
	}
	q := url.Values{}
	if d := r.URL.Query().Get("date"); d != "" {
		q.Set("date", d)
	}
	var rep api.AuditReport
	if err := c.getJSON(r, "/v1/audit/reports/"+url.PathEscape(period), q, &rep); err != nil {
		c.fail(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "report", &rep)
}
