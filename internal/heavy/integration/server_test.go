package integration

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/heavy"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

// apiServer serves both tiers through `agentbox serve`'s handler and returns a Go SDK client for it.
func apiServer(t *testing.T) (*agentbox.Client, *httptest.Server) {
	t.Helper()
	return apiServerWith(t, dispatch.Config{})
}

// apiServerWith is apiServer with a dispatcher configured by cfg (its Heavy is the shared engine).
func apiServerWith(t *testing.T, cfg dispatch.Config) (*agentbox.Client, *httptest.Server) {
	t.Helper()
	ctx := context.Background()
	nanoEng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Heavy = eng
	d := dispatch.New(nanoEng, cfg)
	t.Cleanup(func() { d.Close(); nanoEng.Close(ctx) })
	srv, err := server.New(d, server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { srv.Shutdown(ctx); ts.Close() })
	c, _ := agentbox.New(ts.URL)
	return c, ts
}

// TestThroughTheAPI runs the heavy tier through `agentbox serve`'s handler and the Go SDK.
func TestThroughTheAPI(t *testing.T) {
	ctx := context.Background()
	c, ts := apiServer(t)

	res, err := c.Run(ctx, agentbox.RunBody{Tier: "heavy",
		Code:  "import pandas as pd, matplotlib.pyplot as plt\ndf = pd.read_csv('/data/d.csv')\ndf.plot()\nopen('/output/n.txt', 'w').write(str(len(df)))\nprint(pandas_ok := True)",
		Files: map[string][]byte{"/data/d.csv": []byte("a,b\n1,2\n3,4\n")}})
	if err != nil || res.Tier != "heavy" || res.Stdout != "True\n" || len(res.Artifacts) != 1 || string(res.Files["/output/n.txt"]) != "2" {
		t.Fatalf("%v %+v", err, res)
	}

	s, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: "heavy"})
	if err != nil || s.Info().Tier != "heavy" {
		t.Fatalf("%v %+v", err, s)
	}
	if _, err := s.Upload(ctx, "/data/x.txt", strings.NewReader("41")); err != nil {
		t.Fatal(err)
	}
	s.Run(ctx, "import numpy as np\nv = int(open('/data/x.txt').read())")
	var streamed strings.Builder
	r, err := s.RunStream(ctx, "print(np.int64(v) + 1)\nopen('/output/o.txt', 'w').write('ok')", agentbox.Callbacks{Stdout: func(t string) { streamed.WriteString(t) }})
	if err != nil || r.Stdout != "42\n" || streamed.String() != "42\n" {
		t.Fatalf("%v %+v %q", err, r, streamed.String())
	}
	if data, err := s.Download(ctx, "/output/o.txt"); err != nil || string(data) != "ok" {
		t.Fatalf("%q %v", data, err)
	}
	if files, err := s.ListFiles(ctx, "/data"); err != nil || len(files) != 1 {
		t.Fatalf("%+v %v", files, err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(ctx, "1"); !errors.Is(err, agentbox.ErrNotFound) {
		t.Fatalf("run after close: %v", err)
	}
	resp, err := http.Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	metrics, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"agentbox_heavy_pool_ready", "agentbox_heavy_sessions_open 0", `agentbox_runs_total{outcome="ok",tier="heavy"}`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestAutoRouting: with no tier, imports decide; a nano run that fails for want of a heavy-tier module
// is run again on heavy and says so.
func TestAutoRouting(t *testing.T) {
	ctx := context.Background()
	c, _ := apiServer(t)
	cases := []struct {
		code, tier, fallback, reason, stdout string
	}{
		{"import json\nprint(json.dumps([1]))", "nano", "", "standard library", "[1]\n"},
		{"import pandas as pd\nprint(pd.Series([1, 2]).sum())", "heavy", "", "line 1 imports pandas", "3\n"},
		{"m = __import__('nu' + 'mpy')\nprint(m.arange(3).sum())", "heavy", "nano", "No module named 'numpy'", "3\n"},
		{"import threading\nt = threading.Thread(target=print, args=('hi',))\nt.start(); t.join()", "heavy", "", "cannot use", "hi\n"},
	}
	for _, tc := range cases {
		res, err := c.Run(ctx, agentbox.RunBody{Code: tc.code})
		if err != nil {
			t.Fatal(err)
		}
		if string(res.Tier) != tc.tier || string(res.FallbackFrom) != tc.fallback || !strings.Contains(res.RouteReason, tc.reason) || res.Stdout != tc.stdout {
			t.Errorf("%q: tier %s fallback %q reason %q stdout %q stderr %s", tc.code, res.Tier, res.FallbackFrom, res.RouteReason, res.Stdout, res.Stderr)
		}
	}
}

// TestFileDownloadTooLargeIs413 (issue 9, finding 12): GET of a 200 MiB file (sparse: /tmp is small)
// answered 500 and killed the session, the agent having read it whole. Now the agent refuses it by
// its size, the API answers 413 and the session goes on.
func TestFileDownloadTooLargeIs413(t *testing.T) {
	ctx := context.Background()
	c, _ := apiServer(t)
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: "heavy"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if r, err := s.Run(ctx, "open('/tmp/huge', 'wb').truncate(200 << 20)"); err != nil || r.Error != nil {
		t.Fatalf("%v %+v", err, r)
	}
	_, err = s.Download(ctx, "/tmp/huge")
	var apiErr *agentbox.APIError
	if !errors.Is(err, agentbox.ErrTooLarge) || !errors.As(err, &apiErr) || apiErr.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("download of 200 MiB: %v, want 413", err)
	}
	if r, err := s.Run(ctx, "print('alive')"); err != nil || r.Stdout != "alive\n" {
		t.Fatalf("the session after the refusal: %v %+v", err, r)
	}
}

// TestParallelHeavySessionsAreCapped (issue 9, finding 4): 30 parallel POST /v1/sessions on heavy with
// a cap of 4 start at most 4 sandboxes; the rest are answered 429 with Retry-After.
func TestParallelHeavySessionsAreCapped(t *testing.T) {
	ctx := context.Background()
	e, err := heavy.New(ctx, heavy.Config{PoolSize: -1, MaxConcurrent: 4, MaxQueue: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	nanoEng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(nanoEng, dispatch.Config{Heavy: e})
	defer func() { d.Close(); nanoEng.Close(ctx) }()
	srv, err := server.New(d, server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer func() { srv.Shutdown(ctx); ts.Close() }()

	statuses := make([]int, 30)
	retry := make([]string, 30)
	var wg sync.WaitGroup
	for i := range statuses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(ts.URL+"/v1/sessions", "application/json", strings.NewReader(`{"tier":"heavy"}`))
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses[i], retry[i] = resp.StatusCode, resp.Header.Get("Retry-After")
		}()
	}
	wg.Wait()
	created, refused := 0, 0
	for i, st := range statuses {
		switch {
		case st == http.StatusCreated:
			created++
		case st == http.StatusTooManyRequests && retry[i] != "":
			refused++
		default:
			t.Errorf("request %d: status %d (Retry-After %q)", i, st, retry[i])
		}
	}
	if started := e.Stats.Started.Load(); created > 4 || started > 4 || created+refused != 30 {
		t.Fatalf("%d created, %d refused with 429, %d sandboxes started; want at most 4 started", created, refused, started)
	}
	t.Logf("%d created, %d answered 429, %d sandboxes started", created, refused, e.Stats.Started.Load())
}
