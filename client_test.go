package agentbox_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
	"github.com/entersandbox/agentbox/internal/snapstore"
)

const apiKey = "example-key-0123456789"

var (
	serverOnce sync.Once
	serverURL  string
)

// serverDir is testServer's snapshot store, removed by TestMain.
var serverDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if serverDir != "" {
		os.RemoveAll(serverDir)
	}
	os.Exit(code)
}

// testServer starts one real agentbox server (nano engine behind the HTTP API) for the tests and
// examples of this package.
func testServer() string {
	serverOnce.Do(func() {
		eng, err := nano.New(context.Background(), nano.Config{})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		dir, err := os.MkdirTemp("", "agentbox-sdk-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		serverDir = dir
		st, err := snapstore.Open(snapstore.Config{Dir: dir}) // time travel on
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		srv, err := server.New(dispatch.New(eng, dispatch.Config{Snapshots: st}), server.Config{APIKeys: []string{apiKey}})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		serverURL = httptest.NewServer(srv.Handler()).URL
	})
	return serverURL
}

func ExampleClient_Run() {
	ctx := context.Background()
	c, err := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	if err != nil {
		panic(err)
	}
	res, err := c.Run(ctx, agentbox.RunBody{
		Code:  "import csv\nrows = list(csv.reader(open('/data/in.csv')))\nopen('/output/count.txt', 'w').write(str(len(rows)))\nprint(rows[0])",
		Files: map[string][]byte{"/data/in.csv": []byte("a,b\nc,d\n")},
	})
	if err != nil {
		panic(err)
	}
	fmt.Print(res.Stdout)
	fmt.Println(string(res.Files["/output/count.txt"]))
	// Output:
	// ['a', 'b']
	// 2
}

func ExampleClient_RunStream() {
	ctx := context.Background()
	c, _ := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	var seen []string
	res, err := c.RunStream(ctx, agentbox.RunBody{Code: "for i in range(3): print('step', i, flush=True)"},
		agentbox.Callbacks{Stdout: func(text string) { seen = append(seen, strings.TrimSpace(text)) }})
	if err != nil {
		panic(err)
	}
	fmt.Println(strings.Join(seen, ", "), "| exit", res.ExitCode)
	// Output: step 0, step 1, step 2 | exit 0
}

func ExampleSession() {
	ctx := context.Background()
	c, _ := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	s, err := c.NewSession(ctx, agentbox.SessionRequest{TTLSeconds: 300})
	if err != nil {
		panic(err)
	}
	defer s.Close(ctx)
	s.Upload(ctx, "/data/numbers.txt", strings.NewReader("1 2 3"))
	s.Run(ctx, "nums = [int(x) for x in open('/data/numbers.txt').read().split()]")
	res, _ := s.Run(ctx, "total = sum(nums)\nprint(total)\nopen('/output/total.txt', 'w').write(str(total))")
	out, _ := s.Download(ctx, "/output/total.txt")
	files, _ := s.ListFiles(ctx, "/output")
	fmt.Print(res.Stdout)
	fmt.Println(string(out), files[0].Name)
	// Output:
	// 6
	// 6 total.txt
}

// A session of tier auto (the default) says which tier it is on and why; it moves to heavy, under the
// same id, when a cell needs heavy and the server has it (this test server runs nano only).
func ExampleSession_Refresh() {
	ctx := context.Background()
	c, _ := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	s, err := c.NewSession(ctx, agentbox.SessionRequest{})
	if err != nil {
		panic(err)
	}
	defer s.Close(ctx)
	res, _ := s.Run(ctx, "import numpy")
	info, _ := s.Refresh(ctx)
	fmt.Println(res.Tier, res.Error.Type, info.Tier, info.Cells)
	fmt.Println(res.RouteReason)
	// Output:
	// nano ModuleNotFoundError nano 1
	// the heavy tier is not available here, so the session stays on nano
}

func TestListSessions(t *testing.T) {
	ctx := context.Background()
	c, _ := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	s, err := c.NewSession(ctx, agentbox.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	has := func() bool {
		list, err := c.ListSessions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, info := range list {
			if info.ID == s.ID() {
				return true
			}
		}
		return false
	}
	if !has() {
		t.Fatal("a new session is not listed")
	}
	s.Close(ctx)
	if has() {
		t.Fatal("a closed session is still listed")
	}
}

func TestClientErrors(t *testing.T) {
	ctx := context.Background()
	c, _ := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	_, err := c.Run(ctx, agentbox.RunBody{Code: "1", Limits: agentbox.Limits{MemoryLimitMB: 1 << 20}})
	var apiErr *agentbox.APIError
	if !errors.As(err, &apiErr) || !errors.Is(err, agentbox.ErrInvalidArgument) || apiErr.Status != 400 || apiErr.RequestID == "" {
		t.Fatalf("limit above maximum: %#v", err)
	}
	bad, _ := agentbox.New(testServer(), agentbox.WithAPIKey("wrong-key-0123456789"))
	if _, err := bad.Run(ctx, agentbox.RunBody{Code: "1"}); !errors.Is(err, agentbox.ErrUnauthenticated) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := c.Session(ctx, "ses_missing"); !errors.Is(err, agentbox.ErrNotFound) {
		t.Fatalf("missing session: %v", err)
	}
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Limits: agentbox.Limits{TimeoutMS: 500}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Upload(ctx, "relative.txt", strings.NewReader("x")); err == nil {
		t.Fatal("relative upload path accepted")
	}
	if _, err := s.Download(ctx, "/data/none"); !errors.Is(err, agentbox.ErrNotFound) {
		t.Fatalf("missing file: %v", err)
	}
	// A timeout ends the session's interpreter; the session is then gone.
	res, err := s.RunStream(ctx, "print('start', flush=True)\nwhile True: pass", agentbox.Callbacks{})
	if err != nil || !res.TimedOut {
		t.Fatalf("%v %+v", err, res)
	}
	if _, err := s.Run(ctx, "1"); !errors.Is(err, agentbox.ErrNotFound) {
		t.Fatalf("run on a dead session: %v", err)
	}
	if _, err := agentbox.New("ftp://x"); err == nil {
		t.Fatal("bad base URL accepted")
	}
}

// TestSessionInfoSafeUnderRefresh: Info and Refresh may be called from many goroutines (run with -race),
// and what Info returns is the caller's copy.
func TestSessionInfoSafeUnderRefresh(t *testing.T) {
	ctx := context.Background()
	c, _ := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Limits: agentbox.Limits{AllowedModules: []string{"json"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 20 {
				if _, err := s.Refresh(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
		wg.Go(func() {
			for range 200 {
				if info := s.Info(); info.ID != s.ID() || info.Tier != "nano" {
					t.Errorf("Info during Refresh: %+v", info)
					return
				}
			}
		})
	}
	wg.Wait()
	info := s.Info()
	info.Limits.AllowedModules[0] = "os"
	info.Cells = 99
	if got := s.Info(); got.Limits.AllowedModules[0] != "json" || got.Cells != 0 {
		t.Fatalf("changing Info's answer changed the session's: %+v", got)
	}
}

// TestSessionAnswerWithoutID: a server answer that names no session is an error, not a Session whose
// requests would all go to /v1/sessions/.
func TestSessionAnswerWithoutID(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"tier": "nano"}`))
	}))
	defer ts.Close()
	c, _ := agentbox.New(ts.URL)
	if s, err := c.NewSession(context.Background(), agentbox.SessionRequest{}); err == nil || !strings.Contains(err.Error(), "no session id") {
		t.Fatalf("NewSession: %v %v", s, err)
	}
	if s, err := c.Session(context.Background(), "ses_x"); err == nil {
		t.Fatalf("Session: %v", s)
	}
}

// TestClientKeysAreTenants: a session started with one key is not found with another, and lists
// carry its owner (a hash of the key, never the key).
func TestClientKeysAreTenants(t *testing.T) {
	ctx := context.Background()
	eng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(ctx)
	d := dispatch.New(eng, dispatch.Config{})
	defer d.Close()
	other := "other-key-0123456789"
	srv, err := server.New(d, server.Config{APIKeys: []string{apiKey, other}})
	if err != nil {
		t.Fatal(err)
	}
	h := httptest.NewServer(srv.Handler())
	defer h.Close()
	a, _ := agentbox.New(h.URL, agentbox.WithAPIKey(apiKey))
	b, _ := agentbox.New(h.URL, agentbox.WithAPIKey(other))
	s, err := a.NewSession(ctx, agentbox.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if s.Info().Owner != server.TenantID(apiKey) || strings.Contains(s.Info().Owner, apiKey) {
		t.Fatalf("owner %q", s.Info().Owner)
	}
	if _, err := b.Session(ctx, s.ID()); !errors.Is(err, agentbox.ErrNotFound) {
		t.Fatalf("another key attached to the session: %v", err)
	}
	if l, err := b.ListSessions(ctx); err != nil || len(l) != 0 {
		t.Fatalf("another key lists %v %+v", err, l)
	}
	if l, err := a.ListSessions(ctx); err != nil || len(l) != 1 || l[0].ID != s.ID() {
		t.Fatalf("the owner lists %v %+v", err, l)
	}
}

// TestClientChecksPathsLikeTheServer: the client refuses the sandbox paths the server refuses (one
// check, api.CheckPath) as invalid arguments, before sending anything.
func TestClientChecksPathsLikeTheServer(t *testing.T) {
	ctx := context.Background()
	c, _ := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	s, err := c.NewSession(ctx, agentbox.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	for _, p := range []string{"data/x", "/data/../etc/passwd", "/data/a\x00b", "/" + strings.Repeat("a", 5000)} {
		t.Run(fmt.Sprintf("%.20q", p), func(t *testing.T) {
			if _, err := s.Upload(ctx, p, strings.NewReader("x")); !errors.Is(err, agentbox.ErrInvalidArgument) {
				t.Errorf("upload: %v, want invalid argument", err)
			}
			if _, err := s.Download(ctx, p); !errors.Is(err, agentbox.ErrInvalidArgument) {
				t.Errorf("download: %v, want invalid argument", err)
			}
		})
	}
}
