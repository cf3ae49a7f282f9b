package mcpserver

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
)

// gatedStarts is a dispatcher whose first NewSession waits until release is closed, like a heavy
// session taking seconds to start.
type gatedStarts struct {
	*dispatch.Dispatcher
	starts  atomic.Int32
	entered chan struct{} // closed when the first start is waiting
	release chan struct{}
}

func (g *gatedStarts) NewSession(ctx context.Context, req api.SessionRequest) (*dispatch.Session, error) {
	if g.starts.Add(1) == 1 {
		close(g.entered)
		select {
		case <-g.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.Dispatcher.NewSession(ctx, req)
}

// names returns a copy of the name map: name -> engine session id ("" while starting).
func (t *tools) namesOf(conn *mcp.ServerSession) map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]string{}
	for k, n := range t.names {
		if k.conn != conn {
			continue
		}
		select {
		case <-n.ready:
			out[k.name] = n.id
		default:
			out[k.name] = ""
		}
	}
	return out
}

func TestMCPSessionsDoNotSerialise(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	eng, err := nano.New(ctx, nano.Config{PoolSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(eng, dispatch.Config{})
	t.Cleanup(func() { d.Close(); eng.Close(context.Background()) })
	g := &gatedStarts{Dispatcher: d, entered: make(chan struct{}), release: make(chan struct{})}
	srv, tl := newServer(g, "test")
	connect := func() (*mcp.ClientSession, *mcp.ServerSession) {
		ct, st := mcp.NewInMemoryTransports()
		ss, err := srv.Connect(ctx, st, nil)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := mcp.NewClient(&mcp.Implementation{Name: "t", Version: "1"}, nil).Connect(ctx, ct, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cs, ss
	}
	run := func(ctx context.Context, cs *mcp.ClientSession, session, code string) (string, error) {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: map[string]any{"session": session, "code": code}})
		if err != nil {
			return "", err
		}
		return text(res), nil
	}
	a, aSrv := connect()
	b, bSrv := connect()
	defer a.Close()

	// Connection a starts session "main"; the start hangs. Two calls wait on the same name.
	var wg sync.WaitGroup
	outs := make([]string, 2)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := run(ctx, a, "main", "x = globals().get('x', 0) + 1\nprint(x)")
			if err != nil {
				t.Error(err)
			}
			outs[i] = out
		}()
	}
	<-g.entered

	// Connection b is not held up by it: before the fix it waited on the map's lock.
	bctx, bcancel := context.WithTimeout(ctx, 30*time.Second)
	defer bcancel()
	if out, err := run(bctx, b, "main", "print('b')"); err != nil || out != "b\n" {
		t.Fatalf("connection b's session, while a's was starting: %q %v", out, err)
	}
	close(g.release)
	wg.Wait()
	// Both of a's calls ran in the one session a's name stands for: one saw x = 1, the other 2.
	if !(outs[0] == "1\n" && outs[1] == "2\n" || outs[0] == "2\n" && outs[1] == "1\n") {
		t.Fatalf("a's two calls on one name: %q", outs)
	}
	if n := g.starts.Load(); n != 2 {
		t.Fatalf("%d sessions started for two names", n)
	}

	// A name whose session was reaped is dropped from the map when the next name is reserved.
	aMain := tl.namesOf(aSrv)["main"]
	s, err := d.Session(anyTenant, aMain)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := run(ctx, a, "other", "pass"); err != nil {
		t.Fatal(err)
	}
	if names := tl.namesOf(aSrv); len(names) != 1 || names["other"] == "" {
		t.Fatalf("names of a after its session main was closed: %v", names)
	}

	// When connection b ends, its names go, and its sessions are closed.
	bMain := tl.namesOf(bSrv)["main"]
	b.Close()
	deadline := time.Now().Add(30 * time.Second)
	for len(tl.namesOf(bSrv)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("names of the ended connection b stay: %v", tl.namesOf(bSrv))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := d.Session(anyTenant, bMain); err == nil {
		t.Fatal("the ended connection's session is still open")
	}
}

// failingRuns is a dispatcher whose runs fail with an error quoting a guest's 1 MiB line.
type failingRuns struct{ *dispatch.Dispatcher }

func (failingRuns) Run(context.Context, api.RunRequest, dispatch.Output) (*api.RunResponse, error) {
	return nil, errors.New("bad protocol line " + strings.Repeat("G", 1<<20))
}

func TestMCPToolErrorsCapped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	eng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(eng, dispatch.Config{})
	t.Cleanup(func() { d.Close(); eng.Close(context.Background()) })
	ct, st := mcp.NewInMemoryTransports()
	if _, err := New(failingRuns{d}, "test").Connect(ctx, st, nil); err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "t", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: map[string]any{"code": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := text(res); !res.IsError || len(got) > maxErrorText+64 || !strings.HasPrefix(got, "bad protocol line GGG") || !strings.HasSuffix(got, "more bytes]") {
		t.Fatalf("tool error of %d bytes: %.100q...", len(got), got)
	}
}
