package e2b

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	pb "github.com/entersandbox/agentbox/internal/e2b/envd/process"
	"github.com/entersandbox/agentbox/internal/e2b/envd/process/processconnect"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// fakeShell stands in for a heavy session's commands (the unit tests have no heavy tier; e2e/e2b
// runs the real ones): each command is a background process that prints its script's words, echoes
// its stdin when the script is "cat", and runs until killed when it is "sleep", or ends with the
// exit code after "exit".
type fakeShell struct {
	Session // a real nano session for everything but commands
	mu      sync.Mutex
	next    int
	procs   map[int]*fakeProc
	reqs    []api.CommandRequest
}

type fakeProc struct {
	mu     sync.Mutex
	cmd    api.Command
	out    []string // queued stdout
	stdin  bool     // open
	script string
	done   chan struct{}
}

func (f *fakeShell) Command(ctx context.Context, req api.CommandRequest, _ dispatch.Output) (*api.Command, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !req.Background {
		return nil, errors.New("the E2B layer starts every process in the background")
	}
	f.reqs = append(f.reqs, req)
	f.next++
	script := req.Cmd
	if len(req.Args) > 0 {
		script = req.Args[len(req.Args)-1]
	}
	p := &fakeProc{cmd: api.Command{PID: 100 + f.next, Cmd: req.Cmd, Args: req.Args, State: api.CommandRunning}, stdin: true, script: script, done: make(chan struct{})}
	if f.procs == nil {
		f.procs = map[int]*fakeProc{}
	}
	f.procs[p.cmd.PID] = p
	switch {
	case strings.HasPrefix(script, "echo "):
		word, code, _ := strings.Cut(strings.TrimPrefix(script, "echo "), "; exit ")
		p.out = append(p.out, word+"\n")
		p.end(api.CommandExited, atoi(code))
	case script == "cat", strings.HasPrefix(script, "sleep"):
	default:
		p.out = append(p.out, "unknown script\n")
		p.end(api.CommandExited, 127)
	}
	c := p.cmd
	return &c, nil
}

func atoi(s string) int {
	n := 0
	fmt.Sscan(s, &n)
	return n
}

func (p *fakeProc) end(state string, code int) {
	if p.cmd.State != api.CommandRunning {
		return
	}
	p.cmd.State, p.cmd.ExitCode = state, code
	close(p.done)
}

func (f *fakeShell) proc(pid int) (*fakeProc, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.procs[pid]
	if p == nil {
		return nil, errdefs.With(errdefs.NotFound, fmt.Errorf("no command %d", pid))
	}
	return p, nil
}

func (f *fakeShell) Commands(context.Context) ([]api.Command, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.Command
	for pid := 101; pid <= 100+f.next; pid++ {
		p := f.procs[pid]
		p.mu.Lock()
		out = append(out, p.cmd)
		p.mu.Unlock()
	}
	return out, nil
}

func (f *fakeShell) CommandInput(_ context.Context, pid int, in api.CommandInput) error {
	p, err := f.proc(pid)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stdin {
		return errdefs.With(errdefs.Conflict, errors.New("stdin is closed"))
	}
	if p.script == "cat" {
		p.out = append(p.out, in.Data)
	}
	if in.Close {
		p.stdin = false
		if p.script == "cat" {
			p.end(api.CommandExited, 0)
		}
	}
	return nil
}

func (f *fakeShell) CommandSignal(_ context.Context, pid int, sig string) error {
	p, err := f.proc(pid)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cmd.Signal = sig
	p.end(api.CommandKilled, -1)
	return nil
}

func (f *fakeShell) CommandFollow(ctx context.Context, pid int, fn func(stdout, stderr string)) (*api.Command, error) {
	p, err := f.proc(pid)
	if err != nil {
		return nil, err
	}
	for {
		p.mu.Lock()
		out := strings.Join(p.out, "")
		p.out = nil
		st := p.cmd
		p.mu.Unlock()
		if out != "" {
			fn(out, "")
		}
		if st.State != api.CommandRunning {
			return &st, nil
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-p.done:
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// shellSandboxes gives every new session a fake shell.
type shellSandboxes struct {
	Sandboxes
	mu     sync.Mutex
	shells map[string]*fakeShell
	reqs   map[string]api.SessionRequest
}

func (s *shellSandboxes) NewSession(ctx context.Context, req api.SessionRequest) (Session, error) {
	sess, err := s.Sandboxes.NewSession(ctx, req)
	if err != nil {
		return nil, err
	}
	f := &fakeShell{Session: sess}
	s.mu.Lock()
	s.shells[sess.ID()], s.reqs[sess.ID()] = f, req
	s.mu.Unlock()
	return f, nil
}

func TestProcessRPC(t *testing.T) {
	sbs := &shellSandboxes{Sandboxes: FromDispatch(sessions), shells: map[string]*fakeShell{}, reqs: map[string]api.SessionRequest{}}
	h := New(sbs, Config{Authenticate: testAuth})
	ts := httptest.NewServer(h)
	t.Cleanup(func() { ts.Close(); h.Close() })
	sb := create(t, ts, keyAlice, map[string]any{"templateID": "code-interpreter-v1", "envVars": map[string]string{"FROM_CREATE": "1"}})
	hc := &http.Client{Transport: sandboxTransport{sb.headers(PortEnvd)}}
	shell := sbs.shells[sb.SandboxID]

	// collect reads a process stream to its end: the events' kinds in order, stdout, the end event.
	type ran struct {
		kinds  []string
		stdout string
		end    *pb.ProcessEvent_EndEvent
		pid    uint32
	}
	collect := func(t *testing.T, recv func() bool, msg func() *pb.ProcessEvent, errf func() error) ran {
		t.Helper()
		var r ran
		for recv() {
			switch e := msg().Event.(type) {
			case *pb.ProcessEvent_Start:
				r.kinds, r.pid = append(r.kinds, "start"), e.Start.Pid
			case *pb.ProcessEvent_Data:
				r.kinds, r.stdout = append(r.kinds, "data"), r.stdout+string(e.Data.GetStdout())
			case *pb.ProcessEvent_End:
				r.kinds, r.end = append(r.kinds, "end"), e.End
			case *pb.ProcessEvent_Keepalive:
				r.kinds = append(r.kinds, "keepalive")
			}
		}
		if err := errf(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		return r
	}
	for _, codec := range []struct {
		name string
		opts []connect.ClientOption
	}{{"json", []connect.ClientOption{connect.WithProtoJSON()}}, {"binary", nil}} {
		t.Run(codec.name, func(t *testing.T) {
			ctx := context.Background()
			pc := processconnect.NewProcessClient(hc, ts.URL+SandboxPrefix, codec.opts...)
			start := func(t *testing.T, script string, stdin bool) ran {
				s, err := pc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", script}}, Stdin: &stdin}))
				if err != nil {
					t.Fatal(err)
				}
				return collect(t, s.Receive, func() *pb.ProcessEvent { return s.Msg().Event }, s.Err)
			}
			t.Run("start streams start, data, end", func(t *testing.T) {
				r := start(t, "echo hi", false)
				if strings.Join(r.kinds, ",") != "start,data,end" || r.stdout != "hi\n" || r.end.ExitCode != 0 || !r.end.Exited || r.end.Status != "exit status 0" {
					t.Fatalf("%+v", r)
				}
			})
			t.Run("an exit code", func(t *testing.T) {
				if r := start(t, "echo oops; exit 3", false); r.end.ExitCode != 3 || r.end.Status != "exit status 3" {
					t.Fatalf("%+v", r)
				}
			})
			t.Run("stdin, list, close stdin", func(t *testing.T) {
				stdin := true
				s, err := pc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", "cat"}}, Stdin: &stdin, Tag: ptr("cat-" + codec.name)}))
				if err != nil {
					t.Fatal(err)
				}
				if !s.Receive() || s.Msg().Event.GetStart() == nil {
					t.Fatalf("first event: %v %v", s.Msg(), s.Err())
				}
				pid := s.Msg().Event.GetStart().Pid
				ls, err := pc.List(ctx, connect.NewRequest(&pb.ListRequest{}))
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for _, p := range ls.Msg.Processes {
					found = found || p.Pid == pid && p.GetTag() == "cat-"+codec.name && p.Config.Cmd == "/bin/bash"
				}
				if !found {
					t.Fatalf("List: %v", ls.Msg.Processes)
				}
				if _, err := pc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("typed\n")}}})); err != nil {
					t.Fatal(err)
				}
				if _, err := pc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "cat-" + codec.name}}})); err != nil {
					t.Fatal(err)
				}
				r := collect(t, s.Receive, func() *pb.ProcessEvent { return s.Msg().Event }, s.Err)
				if r.stdout != "typed\n" || r.end == nil || r.end.ExitCode != 0 {
					t.Fatalf("%+v", r)
				}
			})
			t.Run("connect to a running process, then kill it", func(t *testing.T) {
				s, err := pc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", "sleep 30"}}}))
				if err != nil || !s.Receive() {
					t.Fatalf("%v %v", err, s.Err())
				}
				pid := s.Msg().Event.GetStart().Pid
				c, err := pc.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}}))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := pc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
					t.Fatal(err)
				}
				r := collect(t, c.Receive, func() *pb.ProcessEvent { return c.Msg().Event }, c.Err)
				if r.kinds[0] != "start" || r.end == nil || r.end.Exited || !strings.HasPrefix(r.end.Status, "signal: ") {
					t.Fatalf("%+v", r)
				}
				collect(t, s.Receive, func() *pb.ProcessEvent { return s.Msg().Event }, s.Err)
			})
			t.Run("a stream that ends first kills its process", func(t *testing.T) {
				sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
				s, err := pc.Start(sctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", "sleep 30"}}}))
				if err != nil || !s.Receive() {
					t.Fatalf("%v %v", err, s.Err())
				}
				pid := int(s.Msg().Event.GetStart().Pid)
				for s.Receive() {
				}
				p, _ := shell.proc(pid)
				for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
					p.mu.Lock()
					state := p.cmd.State
					p.mu.Unlock()
					if state == api.CommandKilled {
						return
					}
				}
				t.Fatal("the process outlived its stream")
			})
			t.Run("refused", func(t *testing.T) {
				s, err := pc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/bash"}, Pty: &pb.PTY{}}))
				if err == nil {
					for s.Receive() {
					}
					err = s.Err()
				}
				if connect.CodeOf(err) != connect.CodeUnimplemented {
					t.Fatalf("pty: %v", err)
				}
				if _, err := pc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: 9999}}})); connect.CodeOf(err) != connect.CodeNotFound {
					t.Fatalf("unknown pid: %v", err)
				}
				if _, err := pc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "nope"}}})); connect.CodeOf(err) != connect.CodeNotFound {
					t.Fatalf("unknown tag: %v", err)
				}
			})
		})
	}
	t.Run("the sandbox's envs are its session's, the process's envs and cwd the command's", func(t *testing.T) {
		pc := processconnect.NewProcessClient(hc, ts.URL+SandboxPrefix, connect.WithProtoJSON())
		s, err := pc.Start(context.Background(), connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-l", "-c", "echo x"},
			Envs: map[string]string{"OWN": "2"}, Cwd: ptr("/tmp")}}))
		if err != nil {
			t.Fatal(err)
		}
		for s.Receive() {
		}
		shell.mu.Lock()
		req := shell.reqs[len(shell.reqs)-1]
		shell.mu.Unlock()
		if req.Env["OWN"] != "2" || req.Cwd != "/tmp" {
			t.Fatalf("request %+v", req)
		}
		if env := sbs.reqs[sb.SandboxID].Env; env["FROM_CREATE"] != "1" {
			t.Fatalf("the session was started with env %v", env)
		}
	})
}

func ptr[T any](v T) *T { return &v }
