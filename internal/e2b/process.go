package e2b

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	pb "github.com/entersandbox/agentbox/internal/e2b/envd/process"
	"github.com/entersandbox/agentbox/internal/e2b/envd/process/processconnect"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// processService is envd's process.Process over agentbox's shell commands (heavy sessions; a
// code-interpreter sandbox on nano moves to heavy for its first command). Every process is an
// agentbox background command, followed for as long as the Start (or Connect) stream lasts: a
// stream that ends before its process (the SDK's timeoutMs, which it sends as Connect-Timeout-Ms, or
// a client gone) kills it, as envd does.
type processService struct {
	processconnect.UnimplementedProcessHandler
	h *Handler
}

// keepaliveEvery is how often a silent process stream gets a keepalive event (the SDKs ask for one
// at least every 50 s).
const keepaliveEvery = 20 * time.Second

// events serialises a stream's sends: the follower and the keepalive timer both send.
type events struct {
	mu   sync.Mutex
	send func(*pb.ProcessEvent) error
	last time.Time // guarded by mu
}

func (e *events) event(ev *pb.ProcessEvent) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.last = time.Now()
	return e.send(ev)
}

// keepalive sends keepalive events while the stream is silent, until stop is closed.
func (e *events) keepalive(every time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			e.mu.Lock()
			idle := time.Since(e.last) >= every
			e.mu.Unlock()
			if idle {
				e.event(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}})
			}
		}
	}
}

func (s *processService) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	b := sandboxOf(ctx)
	msg := req.Msg
	if msg.Pty != nil {
		return connectError(unsupported("a terminal (pty)", "agentbox commands have pipes, not terminals"))
	}
	cfg := msg.GetProcess()
	if cfg == nil || cfg.Cmd == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	// The sandbox's envs are the session's (api.SessionRequest.Env); the process's come on top.
	creq := api.CommandRequest{Cmd: cfg.Cmd, Args: cfg.Args, Cwd: cfg.GetCwd(), Env: cfg.Envs, Background: true}
	if creq.Cwd == "" {
		creq.Cwd = homeDir
	}
	if dl, ok := ctx.Deadline(); ok {
		creq.TimeoutMS = max(1, int(time.Until(dl)/time.Millisecond))
	}
	cmd, err := b.sess.Command(ctx, creq, dispatch.Output{})
	if err != nil {
		return connectError(err)
	}
	if msg.Tag != nil {
		b.mu.Lock()
		b.tags[msg.GetTag()] = cmd.PID
		b.mu.Unlock()
	}
	if !msg.GetStdin() {
		if err := b.sess.CommandInput(ctx, cmd.PID, api.CommandInput{Close: true}); err != nil && !ended(err) {
			return connectError(err)
		}
	}
	ev := &events{send: func(e *pb.ProcessEvent) error { return stream.Send(&pb.StartResponse{Event: e}) }}
	return s.follow(ctx, b, cmd.PID, ev)
}

func (s *processService) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	b := sandboxOf(ctx)
	pid, err := b.pid(req.Msg.GetProcess())
	if err != nil {
		return connectError(err)
	}
	ev := &events{send: func(e *pb.ProcessEvent) error { return stream.Send(&pb.ConnectResponse{Event: e}) }}
	return s.follow(ctx, b, pid, ev)
}

// follow streams the process's start event, its output as data events and its end event; a stream
// that ends first kills the process.
func (s *processService) follow(ctx context.Context, b *sandbox, pid int, ev *events) error {
	if err := ev.event(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: uint32(pid)}}}); err != nil {
		return err
	}
	stop := make(chan struct{})
	defer close(stop)
	go ev.keepalive(keepaliveEvery, stop)
	var sendErr error
	final, err := b.sess.CommandFollow(ctx, pid, func(stdout, stderr string) {
		if sendErr != nil {
			return
		}
		if stdout != "" {
			sendErr = ev.event(&pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: []byte(stdout)}}}})
		}
		if stderr != "" && sendErr == nil {
			sendErr = ev.event(&pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: []byte(stderr)}}}})
		}
	})
	if err != nil {
		if ctx.Err() != nil {
			// The stream ended before the process: it goes with it.
			b.sess.CommandSignal(context.WithoutCancel(ctx), pid, "SIGKILL")
		}
		return connectError(err)
	}
	if sendErr != nil {
		return sendErr
	}
	end := &pb.ProcessEvent_EndEvent{ExitCode: int32(final.ExitCode), Exited: final.State == api.CommandExited, Status: status(final)}
	if final.State == api.CommandTimedOut {
		msg := "the command was stopped at its time limit"
		end.Error = &msg
	}
	return ev.event(&pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}})
}

// status is envd's status text: what Go's os.ProcessState says.
func status(c *api.Command) string {
	switch c.State {
	case api.CommandExited:
		return fmt.Sprintf("exit status %d", c.ExitCode)
	case api.CommandKilled:
		if c.Signal != "" {
			return "signal: " + c.Signal
		}
		return "signal: killed"
	case api.CommandTimedOut:
		return "signal: killed"
	}
	return c.State
}

// ended reports whether err says the command is over (closing the stdin of a process that already
// exited is no failure).
func ended(err error) bool { return errdefs.ClassOf(err) == errdefs.Conflict }

func (s *processService) List(ctx context.Context, _ *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	b := sandboxOf(ctx)
	cmds, err := b.sess.Commands(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	b.mu.Lock()
	tagOf := map[int]string{}
	for t, pid := range b.tags {
		tagOf[pid] = t
	}
	b.mu.Unlock()
	out := &pb.ListResponse{}
	for _, c := range cmds {
		if c.State != api.CommandRunning {
			continue
		}
		info := &pb.ProcessInfo{Pid: uint32(c.PID), Config: &pb.ProcessConfig{Cmd: c.Cmd, Args: c.Args}}
		if t, ok := tagOf[c.PID]; ok {
			info.Tag = &t
		}
		out.Processes = append(out.Processes, info)
	}
	return connect.NewResponse(out), nil
}

func (s *processService) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	b := sandboxOf(ctx)
	pid, err := b.pid(req.Msg.GetProcess())
	if err != nil {
		return nil, connectError(err)
	}
	in := req.Msg.GetInput()
	if in.GetPty() != nil {
		return nil, connectError(unsupported("terminal input", "agentbox commands have pipes, not terminals"))
	}
	if err := b.sess.CommandInput(ctx, pid, api.CommandInput{Data: string(in.GetStdin())}); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

func (s *processService) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	b := sandboxOf(ctx)
	pid := -1
	for stream.Receive() {
		switch ev := stream.Msg().Event.(type) {
		case *pb.StreamInputRequest_Start:
			p, err := b.pid(ev.Start.GetProcess())
			if err != nil {
				return nil, connectError(err)
			}
			pid = p
		case *pb.StreamInputRequest_Data:
			if pid < 0 {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("the input stream's first event must be start, naming the process"))
			}
			if ev.Data.GetInput().GetPty() != nil {
				return nil, connectError(unsupported("terminal input", "agentbox commands have pipes, not terminals"))
			}
			if err := b.sess.CommandInput(ctx, pid, api.CommandInput{Data: string(ev.Data.GetInput().GetStdin())}); err != nil {
				return nil, connectError(err)
			}
		}
	}
	if err := stream.Err(); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

func (s *processService) CloseStdin(ctx context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	b := sandboxOf(ctx)
	pid, err := b.pid(req.Msg.GetProcess())
	if err != nil {
		return nil, connectError(err)
	}
	if err := b.sess.CommandInput(ctx, pid, api.CommandInput{Close: true}); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

func (s *processService) SendSignal(ctx context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	b := sandboxOf(ctx)
	pid, err := b.pid(req.Msg.GetProcess())
	if err != nil {
		return nil, connectError(err)
	}
	sig := "SIGKILL"
	if req.Msg.GetSignal() == pb.Signal_SIGNAL_SIGTERM {
		sig = "SIGTERM"
	}
	if err := b.sess.CommandSignal(ctx, pid, sig); err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

func (s *processService) Update(context.Context, *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	return nil, connectError(unsupported("resizing a terminal", "agentbox commands have pipes, not terminals"))
}

// pid resolves a process selector: a pid, or a tag given at Start.
func (b *sandbox) pid(sel *pb.ProcessSelector) (int, error) {
	switch s := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		return int(s.Pid), nil
	case *pb.ProcessSelector_Tag:
		b.mu.Lock()
		pid, ok := b.tags[s.Tag]
		b.mu.Unlock()
		if !ok {
			return 0, errdefs.With(errdefs.NotFound, fmt.Errorf("no process tagged %q", s.Tag))
		}
		return pid, nil
	}
	return 0, errdefs.With(errdefs.InvalidArgument, errors.New("process selector: give pid or tag"))
}
