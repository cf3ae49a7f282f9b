package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
	"github.com/entersandbox/agentbox/internal/tier"
)

// shellTier is a heavy tier whose sessions run fake commands: a foreground command prints its
// args, "false" exits 1; a background command is a cat: its stdin becomes its stdout, closing it
// ends it, a signal kills it.
type shellTier struct{}

func (shellTier) RunCollect(context.Context, api.RunRequest, tier.Stream, int64, int64) (*api.Result, *tier.Collected, error) {
	return &api.Result{Tier: api.TierHeavy}, nil, nil
}
func (shellTier) NewSession(context.Context, api.Limits, []string) (tier.Session, error) {
	return &shellSession{bg: map[int]*api.Command{}}, nil
}
func (shellTier) Limits(req api.Limits) (api.Limits, error) {
	return limits.Resolve(req, api.Limits{TimeoutMS: 60_000, MemoryLimitMB: 1024, MaxOutputBytes: 1 << 20},
		api.Limits{TimeoutMS: 1_800_000, MemoryLimitMB: 8192, MaxOutputBytes: 64 << 20}, 128, api.TierHeavy)
}
func (shellTier) PoolReady() int              { return 0 }
func (shellTier) Close(context.Context) error { return nil }

type shellSession struct {
	mu     sync.Mutex
	bg     map[int]*api.Command // guarded by mu
	closed bool                 // guarded by mu
}

func (s *shellSession) Run(context.Context, string, tier.Stream) (*api.Result, error) {
	return &api.Result{Tier: api.TierHeavy}, nil
}
func (s *shellSession) WriteFile(context.Context, string, []byte) error { return nil }
func (s *shellSession) ReadFile(context.Context, string, int64) ([]byte, error) {
	return []byte{}, nil
}
func (s *shellSession) ListFiles(context.Context, string) ([]api.FileInfo, error) { return nil, nil }
func (s *shellSession) Alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.closed
}
func (s *shellSession) Close(context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

func (s *shellSession) Command(_ context.Context, req api.CommandRequest, stream tier.Stream) (*api.Command, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &api.Command{PID: 100 + len(s.bg), Cmd: req.Cmd, Args: req.Args, State: api.CommandRunning, StartedAt: time.Now().UTC().Format(time.RFC3339Nano)}
	if req.Background {
		c.Stdout = req.Stdin
		s.bg[c.PID] = c
		out := *c
		out.Stdout = ""
		return &out, nil
	}
	c.State = api.CommandExited
	if req.Cmd == "false" {
		c.ExitCode = 1
		c.Stderr = "failed\n"
		if stream.Stderr != nil {
			stream.Stderr(c.Stderr)
		}
		return c, nil
	}
	for _, a := range req.Args {
		c.Stdout += a + "\n"
		if stream.Stdout != nil {
			stream.Stdout(a + "\n")
		}
	}
	return c, nil
}

func (s *shellSession) get(pid int) (*api.Command, error) {
	c := s.bg[pid]
	if c == nil {
		return nil, errdefs.With(errdefs.NotFound, errors.New("no background command with that pid"))
	}
	return c, nil
}

func (s *shellSession) Commands(context.Context) ([]api.Command, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []api.Command
	for _, c := range s.bg {
		cc := *c
		cc.Stdout = ""
		out = append(out, cc)
	}
	return out, nil
}

func (s *shellSession) CommandRead(_ context.Context, pid int, from tier.CommandOffsets, _ time.Duration) (*api.Command, tier.CommandOffsets, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.get(pid)
	if err != nil {
		return nil, from, false, err
	}
	out := *c
	out.Stdout = c.Stdout[from.Stdout:]
	return &out, tier.CommandOffsets{Stdout: int64(len(c.Stdout))}, false, nil
}

func (s *shellSession) CommandInput(_ context.Context, pid int, in api.CommandInput) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.get(pid)
	if err != nil {
		return err
	}
	c.Stdout += in.Data
	if in.Close {
		c.State = api.CommandExited
	}
	return nil
}

func (s *shellSession) CommandSignal(_ context.Context, pid int, sig string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.get(pid)
	if err != nil {
		return err
	}
	c.State, c.Signal, c.ExitCode = api.CommandKilled, sig, -1
	return nil
}

// shellServer is an audited server whose heavy tier is shellTier.
func shellServer(t *testing.T) (string, *audit.Log) {
	t.Helper()
	l, err := audit.Open(context.Background(), audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(eng, dispatch.Config{Heavy: shellTier{}})
	srv, err := New(d, Config{APIKeys: []string{testKey}, MaxBodyBytes: 1 << 20, Audit: l})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		d.Close()
		l.Close()
	})
	return hs.URL, l
}

// sseEvents reads a stream's events as (name, data) pairs.
func sseEvents(body []byte) [][2]string {
	var out [][2]string
	var name string
	for _, line := range strings.Split(string(body), "\n") {
		switch {
		case strings.HasPrefix(line, "event: "):
			name = line[7:]
		case strings.HasPrefix(line, "data: "):
			out = append(out, [2]string{name, line[6:]})
		}
	}
	return out
}

func TestCommandsHTTP(t *testing.T) {
	base, l := shellServer(t)
	ctx := context.Background()
	heavy := decodeInto[api.Session](t, doAt(t, base, call{method: "POST", path: "/v1/sessions", body: []byte(`{"tier": "heavy"}`)}, checkBoth))
	nanoS := decodeInto[api.Session](t, doAt(t, base, call{method: "POST", path: "/v1/sessions", body: []byte(`{"tier": "nano"}`)}, checkBoth))
	cmds := "/v1/sessions/" + heavy.ID + "/commands"

	t.Run("foreground answers the command's end", func(t *testing.T) {
		got := decodeInto[api.Command](t, doAt(t, base, call{method: "POST", path: cmds, body: mustJSON(api.CommandRequest{Cmd: "echo", Args: []string{"hi"}})}, checkBoth))
		if got.State != api.CommandExited || got.Stdout != "hi\n" {
			t.Fatalf("%+v", got)
		}
	})
	t.Run("a failing command's exit code and stderr", func(t *testing.T) {
		got := decodeInto[api.Command](t, doAt(t, base, call{method: "POST", path: cmds, body: mustJSON(api.CommandRequest{Cmd: "false"})}, checkBoth))
		if got.ExitCode != 1 || got.Stderr != "failed\n" {
			t.Fatalf("%+v", got)
		}
	})
	t.Run("streamed as stdout events and a result", func(t *testing.T) {
		r := doAt(t, base, call{method: "POST", path: cmds, accept: "text/event-stream", body: mustJSON(api.CommandRequest{Cmd: "echo", Args: []string{"a", "b"}})}, checkBoth)
		ev := sseEvents(r.body)
		if len(ev) != 3 || ev[0] != [2]string{"stdout", `{"text":"a\n"}`} || ev[1][0] != "stdout" || ev[2][0] != "result" || !strings.Contains(ev[2][1], `"stdout":"a\nb\n"`) {
			t.Fatalf("%q", ev)
		}
	})
	var cat api.Command
	t.Run("background starts, takes stdin, is read and listed", func(t *testing.T) {
		cat = decodeInto[api.Command](t, doAt(t, base, call{method: "POST", path: cmds, body: mustJSON(api.CommandRequest{Cmd: "cat", Background: true, Stdin: "one\n"})}, checkBoth))
		if cat.State != api.CommandRunning || cat.PID == 0 {
			t.Fatalf("%+v", cat)
		}
		path := cmds + "/" + strconv.Itoa(cat.PID)
		if r := doAt(t, base, call{method: "POST", path: path + "/stdin", body: mustJSON(api.CommandInput{Data: "two\n"})}, checkBoth); r.status != 204 {
			t.Fatalf("stdin: %d %s", r.status, r.body)
		}
		got := decodeInto[api.Command](t, doAt(t, base, call{method: "GET", path: path}, checkBoth))
		if got.State != api.CommandRunning || got.Stdout != "one\ntwo\n" {
			t.Fatalf("%+v", got)
		}
		list := decodeInto[api.CommandList](t, doAt(t, base, call{method: "GET", path: cmds}, checkBoth))
		if len(list.Commands) != 1 || list.Commands[0].PID != cat.PID {
			t.Fatalf("%+v", list)
		}
	})
	t.Run("following a background command streams its output and end", func(t *testing.T) {
		path := cmds + "/" + strconv.Itoa(cat.PID)
		doAt(t, base, call{method: "POST", path: path + "/stdin", body: mustJSON(api.CommandInput{Data: "three\n", Close: true})}, checkBoth)
		ev := sseEvents(doAt(t, base, call{method: "GET", path: path, accept: "text/event-stream"}, checkBoth).body)
		if len(ev) != 2 || ev[0] != [2]string{"stdout", `{"text":"one\ntwo\nthree\n"}`} || ev[1][0] != "result" || !strings.Contains(ev[1][1], `"state":"exited"`) {
			t.Fatalf("%q", ev)
		}
	})
	t.Run("kill", func(t *testing.T) {
		bg := decodeInto[api.Command](t, doAt(t, base, call{method: "POST", path: cmds, body: mustJSON(api.CommandRequest{Cmd: "sleep", Background: true})}, checkBoth))
		path := cmds + "/" + strconv.Itoa(bg.PID)
		if r := doAt(t, base, call{method: "POST", path: path + "/kill", body: mustJSON(api.CommandSignal{Signal: "SIGTERM"})}, checkBoth); r.status != 204 {
			t.Fatalf("kill: %d %s", r.status, r.body)
		}
		if r := doAt(t, base, call{method: "POST", path: path + "/kill", contentType: "-"}, checkBoth); r.status != 204 {
			t.Fatalf("kill without a body: %d %s", r.status, r.body)
		}
		got := decodeInto[api.Command](t, doAt(t, base, call{method: "GET", path: path}, checkBoth))
		if got.State != api.CommandKilled || got.Signal != "SIGKILL" {
			t.Fatalf("%+v", got)
		}
	})
	t.Run("refusals", func(t *testing.T) {
		wantError(t, doAt(t, base, call{method: "POST", path: "/v1/sessions/" + nanoS.ID + "/commands", body: mustJSON(api.CommandRequest{Cmd: "ls"})}, checkBoth), 400, "invalid_argument", `tier "heavy"`)
		wantError(t, doAt(t, base, call{method: "POST", path: cmds, body: []byte(`{"cmd": "ls", "nope": 1}`)}, checkResponse), 400, "invalid_argument", "nope")
		wantError(t, doAt(t, base, call{method: "POST", path: cmds, body: []byte(`{"cmd": " "}`)}, checkBoth), 400, "invalid_argument", "cmd is empty")
		wantError(t, doAt(t, base, call{method: "POST", path: cmds, body: mustJSON(api.CommandRequest{Cmd: "ls", Env: map[string]string{"A=B": "x"}})}, checkBoth), 400, "invalid_argument", "env")
		wantError(t, doAt(t, base, call{method: "GET", path: cmds + "/999"}, checkBoth), 404, "not_found", "999")
		wantError(t, doAt(t, base, call{method: "GET", path: cmds + "/x"}, checkResponse), 400, "invalid_argument", "pid")
		wantError(t, doAt(t, base, call{method: "POST", path: cmds + "/" + strconv.Itoa(cat.PID) + "/kill", body: []byte(`{"signal": "SIGNOPE"}`)}, checkResponse), 400, "invalid_argument", "SIGNOPE")
		wantError(t, doAt(t, base, call{method: "POST", path: "/v1/sessions/ses_none/commands", body: mustJSON(api.CommandRequest{Cmd: "ls"})}, checkBoth), 404, "not_found", "")
	})
	t.Run("audited without the command line", func(t *testing.T) {
		for _, c := range []struct {
			typ  string
			want int
		}{{audit.TypeCommand, 8}, {audit.TypeCommandInput, 2}, {audit.TypeCommandKill, 3}} {
			evs, err := l.Search(ctx, audit.Query{Type: c.typ})
			if err != nil || len(evs.Events) != c.want {
				t.Fatalf("%s: %v %d events, want %d", c.typ, err, len(evs.Events), c.want)
			}
			raw, _ := json.Marshal(evs.Events)
			if strings.Contains(string(raw), "three") || strings.Contains(string(raw), `"echo"`) {
				t.Fatalf("%s records content: %s", c.typ, raw)
			}
		}
	})
}

// TestEnvHTTP: env of a run and of a session reaches the program's os.environ.
func TestEnvHTTP(t *testing.T) {
	res := decodeInto[api.RunResponse](t, do(t, call{method: "POST", path: "/v1/run", body: []byte(`{"code": "import os; print(os.environ['A'])", "env": {"A": "from the run"}}`)}, checkBoth))
	if res.Stdout != "from the run\n" {
		t.Fatalf("%+v", res)
	}
	s := decodeInto[api.Session](t, do(t, call{method: "POST", path: "/v1/sessions", body: []byte(`{"env": {"B": "from the session"}}`)}, checkBoth))
	defer do(t, call{method: "DELETE", path: "/v1/sessions/" + s.ID}, checkBoth)
	cell := decodeInto[api.Result](t, do(t, call{method: "POST", path: "/v1/sessions/" + s.ID + "/run", body: []byte(`{"code": "import os; os.environ['B']"}`)}, checkBoth))
	if len(cell.Results) != 1 || string(cell.Results[0].Data["text/plain"]) != `"'from the session'"` {
		t.Fatalf("%+v", cell)
	}
	wantError(t, do(t, call{method: "POST", path: "/v1/run", body: []byte(`{"code": "1", "env": {"": "x"}}`)}, checkBoth), 400, "invalid_argument", "env")
}
