package dispatch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/nano"
)

// These tests run on a host without the heavy tier; moving between tiers is tested against the real
// heavy tier in internal/heavy/integration.

var eng *nano.Engine

func TestMain(m *testing.M) {
	var err error
	eng, err = nano.New(context.Background(), nano.Config{PoolSize: 2, MaxConcurrent: 2})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	eng.Close(context.Background())
	os.Exit(code)
}

func newDispatcher(t *testing.T, cfg Config) *Dispatcher {
	d := New(eng, cfg)
	t.Cleanup(d.Close)
	return d
}

func TestRunPlacement(t *testing.T) {
	d := newDispatcher(t, Config{})
	ctx := context.Background()
	cases := []struct {
		name   string
		req    api.RunRequest
		class  *errdefs.Class // want this error class, or nil for a result
		tier   api.Tier
		reason string
		stdout string
	}{
		{"auto stdlib", api.RunRequest{Code: "import json\nprint(json.dumps(1))"}, nil, api.TierNano, "standard library", "1\n"},
		{"auto numpy without heavy", api.RunRequest{Code: "import numpy"}, nil, api.TierNano, "not available here", ""},
		{"explicit nano", api.RunRequest{Code: "print(2)", Tier: api.TierNano}, nil, api.TierNano, `tier "nano" was asked for`, "2\n"},
		{"allowed_modules pins nano", api.RunRequest{Code: "import numpy", Limits: api.Limits{AllowedModules: []string{"json"}}}, nil, api.TierNano, "allowed_modules", ""},
		{"heavy refused", api.RunRequest{Code: "1", Tier: api.TierHeavy}, errdefs.InvalidArgument, "", "", ""},
		{"packages refused", api.RunRequest{Code: "1", Packages: []string{"rich"}}, errdefs.InvalidArgument, "", "", ""},
		{"packages on nano", api.RunRequest{Code: "1", Tier: api.TierNano, Packages: []string{"rich"}}, errdefs.InvalidArgument, "", "", ""},
		{"unknown tier", api.RunRequest{Code: "1", Tier: "gpu"}, errdefs.InvalidArgument, "", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := d.Run(ctx, tc.req, Output{})
			if tc.class != nil {
				if !errors.Is(err, tc.class) {
					t.Fatalf("want %s, got %v", tc.class.Name(), err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.Tier != tc.tier || !strings.Contains(resp.RouteReason, tc.reason) || resp.Stdout != tc.stdout {
				t.Fatalf("tier %s reason %q stdout %q", resp.Tier, resp.RouteReason, resp.Stdout)
			}
		})
	}
}

func TestRunReturnsOutputFiles(t *testing.T) {
	d := newDispatcher(t, Config{MaxFileBytes: 100, MaxFilesBytes: 150})
	var streamed strings.Builder
	resp, err := d.Run(context.Background(), api.RunRequest{Code: "for n in 'abc':\n    open(f'/output/{n}', 'w').write(n * 80)\nprint('done')"},
		Output{Stdout: func(s string) { streamed.WriteString(s) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Files) != 1 || len(resp.FilesOmitted) != 2 || streamed.String() != "done\n" {
		t.Fatalf("files %d omitted %v streamed %q", len(resp.Files), resp.FilesOmitted, streamed.String())
	}
}

func TestSessionWithoutHeavy(t *testing.T) {
	d := newDispatcher(t, Config{})
	ctx := context.Background()
	if _, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy}); !errors.Is(err, ErrNoHeavy) {
		t.Fatalf("heavy session on a host without heavy: %v", err)
	}
	if _, err := d.NewSession(ctx, api.SessionRequest{TTLSeconds: -1}); !errors.Is(err, errdefs.InvalidArgument) {
		t.Fatalf("negative TTL: %v", err)
	}
	s, err := d.NewSession(ctx, api.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info := s.Info(); info.Tier != api.TierNano || info.RouteReason == "" || info.MovedFrom != "" {
		t.Fatalf("%+v", info)
	}
	if _, err := s.Run(ctx, "x = 41", Output{}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Run(ctx, "import numpy", Output{})
	if err != nil || res.Tier != api.TierNano || !strings.Contains(res.RouteReason, "not available here") {
		t.Fatalf("%v %+v", err, res)
	}
	res, err = s.Run(ctx, "print(x + 1)", Output{})
	if err != nil || res.Stdout != "42\n" || s.Info().Cells != 3 {
		t.Fatalf("%v %+v cells %d", err, res, s.Info().Cells)
	}
	if got, _ := d.Session(ctx, s.ID()); got != s {
		t.Fatal("Session(id) did not find the session")
	}
	if st := d.Stats(); st.Sessions != 1 || st.HeavySessions != 0 || st.Heavy {
		t.Fatalf("%+v", st)
	}
	s.Close()
	s.Close()
	if _, err := d.Session(ctx, s.ID()); !errors.Is(err, errdefs.NotFound) {
		t.Fatalf("closed session: %v", err)
	}
	if _, err := s.Run(ctx, "1", Output{}); !errors.Is(err, ErrSessionGone) {
		t.Fatalf("run on a closed session: %v", err)
	}
}

func TestSessionFiles(t *testing.T) {
	d := newDispatcher(t, Config{})
	ctx := context.Background()
	s, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierNano})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WriteFile(ctx, "/data/in/x.txt", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if res, _ := s.Run(ctx, "print(open('/data/in/x.txt').read())", Output{}); res == nil || res.Stdout != "hello\n" {
		t.Fatalf("%+v", res)
	}
	files, err := s.ListFiles(ctx, "/data/in")
	if err != nil || len(files) != 1 || files[0].Name != "x.txt" || files[0].Size != 5 {
		t.Fatalf("%v %+v", err, files)
	}
	cases := []struct {
		name  string
		op    func() error
		class *errdefs.Class
	}{
		{"relative path", func() error { return s.WriteFile(ctx, "data/x", nil) }, errdefs.InvalidArgument},
		{"dot-dot", func() error { _, err := s.ReadFile(ctx, "/data/../etc/passwd", 0); return err }, errdefs.InvalidArgument},
		{"missing file", func() error { _, err := s.ReadFile(ctx, "/data/nope", 0); return err }, errdefs.NotFound},
		{"over the read cap", func() error { _, err := s.ReadFile(ctx, "/data/in/x.txt", 2); return err }, errdefs.InvalidArgument},
		{"missing dir", func() error { _, err := s.ListFiles(ctx, "/data/nope"); return err }, errdefs.NotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.op(); !errors.Is(err, tc.class) {
				t.Fatalf("want %s, got %v", tc.class.Name(), err)
			}
		})
	}
}

func TestSessionBusyIsConflict(t *testing.T) {
	d := newDispatcher(t, Config{})
	ctx := context.Background()
	s, err := d.NewSession(ctx, api.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var once sync.Once
		s.Run(ctx, "import time\nprint('go', flush=True)\ntime.sleep(1)", Output{Stdout: func(string) { once.Do(func() { close(started) }) }})
	}()
	<-started
	if _, err := s.Run(ctx, "1", Output{}); !errors.Is(err, errdefs.Conflict) {
		t.Errorf("run during a run: %v", err)
	}
	if err := s.WriteFile(ctx, "/data/x", nil); !errors.Is(err, errdefs.Conflict) {
		t.Errorf("write during a run: %v", err)
	}
	if s.Info().Tier != api.TierNano {
		t.Error("Info waited for the running cell or lost the tier")
	}
	wg.Wait()
}

func TestSessionEnds(t *testing.T) {
	d := newDispatcher(t, Config{})
	ctx := context.Background()
	t.Run("its interpreter dies", func(t *testing.T) {
		s, err := d.NewSession(ctx, api.SessionRequest{Limits: api.Limits{TimeoutMS: 200}})
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Run(ctx, "while True: pass", Output{})
		if err != nil || !res.TimedOut {
			t.Fatalf("%v %+v", err, res)
		}
		if _, err := d.Session(ctx, s.ID()); !errors.Is(err, errdefs.NotFound) {
			t.Fatalf("a timed-out session is still listed: %v", err)
		}
	})
	t.Run("idle past its TTL", func(t *testing.T) {
		s, err := d.NewSession(ctx, api.SessionRequest{TTLSeconds: 1})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := d.Session(ctx, s.ID()); errors.Is(err, errdefs.NotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("an idle session was not reaped")
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := s.Run(ctx, "1", Output{}); !errors.Is(err, ErrSessionGone) {
			t.Fatalf("run on a reaped session: %v", err)
		}
	})
}

// TestNilHeavyEngineIsNoHeavy: a nil *heavy.Engine in Config.Heavy (a typed nil in the interface,
// which is not == nil) means no heavy tier, as a nil Heavy does, instead of a tier that panics.
func TestNilHeavyEngineIsNoHeavy(t *testing.T) {
	var h *heavy.Engine
	d := newDispatcher(t, Config{Heavy: h})
	ctx := context.Background()
	if _, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy}); !errors.Is(err, ErrNoHeavy) {
		t.Fatalf("heavy session with a nil heavy engine: %v, want ErrNoHeavy", err)
	}
	resp, err := d.Run(ctx, api.RunRequest{Code: "import numpy"}, Output{})
	if err != nil || resp.Tier != api.TierNano {
		t.Fatalf("auto run needing heavy with a nil heavy engine: %v %+v, want it on nano", err, resp)
	}
	if d.Stats().Heavy {
		t.Fatal("stats say heavy is available")
	}
}

// TestReaperTellsOnSessionEnd: a session the reaper closes for idling past its TTL is reported to
// Config.OnSessionEnd (the audit log's session.expire), with what it was; a session closed by its
// client is not.
func TestReaperTellsOnSessionEnd(t *testing.T) {
	type end struct {
		info   api.Session
		reason string
	}
	ends := make(chan end, 4)
	d := newDispatcher(t, Config{OnSessionEnd: func(info api.Session, reason string) { ends <- end{info, reason} }})
	ctx := context.Background()
	closed, err := d.NewSession(ctx, api.SessionRequest{TTLSeconds: 1})
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	s, err := d.NewSession(ctx, api.SessionRequest{TTLSeconds: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx, "x = 1", Output{}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ends:
		if e.info.ID != s.ID() || e.reason != "ttl" || e.info.Cells != 1 || e.info.Tier != api.TierNano {
			t.Fatalf("got %+v", e)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the expiry was not reported")
	}
	select {
	case e := <-ends:
		t.Fatalf("a second end reported: %+v", e)
	case <-time.After(1500 * time.Millisecond):
	}
}
