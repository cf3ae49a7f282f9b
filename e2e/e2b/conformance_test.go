// Package e2b runs the official E2B JS SDKs (pinned in oldest/ and newest/, installed with npm ci)
// against a real `agentbox serve` on loopback: conformance.mjs's checks, and the create + runCode +
// kill benchmark against the same through agentbox's Go SDK. The tests need AGENTBOX_INTEGRATION=1
// (root, runsc and the heavy root filesystem for the chart and command checks; node and npm);
// without it `go test` reports the package as not run and why.
package e2b

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/entersandbox/agentbox"
)

const integrationEnv = "AGENTBOX_INTEGRATION"

// key is the server's API key, shaped e2b_<hex> because e2b < 2.4x (and the Python SDK) refuse
// keys of any other shape before sending them.
const key = "e2b_0123456789abcdef0123456789abcdef"

// sdkSets are the pinned SDK versions: the oldest that reach agentbox through one host, the newest.
var sdkSets = []string{"oldest", "newest"}

var server string // the base URL of the agentbox under test

func TestMain(m *testing.M) {
	flag.Parse()
	on, err := strconv.ParseBool(cmp.Or(os.Getenv(integrationEnv), "0"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: want 1 or 0\n", integrationEnv, os.Getenv(integrationEnv))
		os.Exit(2)
	}
	if !on {
		fmt.Printf("E2B SDK conformance tests not run: set %s=1 (needs root, runsc, the heavy root filesystem, node and npm)\n", integrationEnv)
		flag.Set("test.skip", ".")
		flag.Set("test.bench", "")
		os.Exit(m.Run())
	}
	stop, err := start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting agentbox serve:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

// start builds agentbox, serves it on a free loopback port with its own state directory, and
// installs the pinned SDKs where they are not yet.
func start() (func(), error) {
	for _, set := range sdkSets {
		if _, err := os.Stat(filepath.Join(set, "node_modules")); err == nil {
			continue
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = set
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("npm ci in %s: %w\n%s", set, err, out)
		}
	}
	tmp, err := os.MkdirTemp("", "agentbox-e2b-")
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(tmp, "agentbox")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/agentbox").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %w\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	srv := exec.Command(bin, "serve", "--addr", addr, "--api-key", key, "--state-dir", filepath.Join(tmp, "state"))
	log, err := os.Create(filepath.Join(tmp, "serve.log"))
	if err != nil {
		return nil, err
	}
	srv.Stdout, srv.Stderr = log, log
	if err := srv.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		srv.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			srv.Process.Kill()
			<-done
		}
		os.RemoveAll(tmp)
	}
	server = "http://" + addr
	for end := time.Now().Add(2 * time.Minute); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get(server + "/healthz")
		if err == nil {
			var h struct {
				Heavy bool `json:"heavy"`
			}
			json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if !h.Heavy {
				stop()
				return nil, fmt.Errorf("the server has no heavy tier (%s=1 needs runsc and the root filesystem: build/heavy/build.sh)", integrationEnv)
			}
			return stop, nil
		}
	}
	out, _ := os.ReadFile(log.Name())
	stop()
	return nil, fmt.Errorf("agentbox serve did not answer /healthz within 2 minutes:\n%s", out)
}

// node runs conformance.mjs in an SDK set's directory with the E2B variables pointing at server.
func node(ctx context.Context, set string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "node", append([]string{"../conformance.mjs"}, args...)...)
	cmd.Dir = set
	cmd.Env = append(os.Environ(), "E2B_API_URL="+server+"/e2b/api", "E2B_SANDBOX_URL="+server+"/e2b/sandbox",
		"E2B_API_KEY="+key, "E2B_HEAVY=1")
	return cmd
}

// TestOfficialSDKs runs every conformance check (create, runCode with a last expression, a chart,
// an error, files, commands, kill, timeout) through both SDK sets.
func TestOfficialSDKs(t *testing.T) {
	for _, set := range sdkSets {
		t.Run(set, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			out, err := node(ctx, set).CombinedOutput()
			t.Logf("%s", out)
			if err != nil {
				t.Fatalf("conformance.mjs with the %s SDKs: %v", set, err)
			}
			if !strings.Contains(string(out), " 0 failed") {
				t.Fatalf("conformance.mjs did not report its checks")
			}
		})
	}
}

// BenchmarkCreateRunKill: Sandbox.create() + runCode('1+1') + kill, through the E2B JS SDK and
// through agentbox's Go SDK, median over 50 each (b.N is not used: the JS loop runs in node).
func BenchmarkCreateRunKill(b *testing.B) {
	const n = 50
	for _, set := range sdkSets {
		b.Run("e2b-js-"+set, func(b *testing.B) {
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				out, err := node(ctx, set, "bench", strconv.Itoa(n)).Output()
				cancel()
				if err != nil {
					b.Fatalf("%v\n%s", err, out)
				}
				var res struct {
					Median float64 `json:"median_ms"`
				}
				sc := bufio.NewScanner(strings.NewReader(string(out)))
				for sc.Scan() {
					json.Unmarshal(sc.Bytes(), &res)
				}
				b.ReportMetric(res.Median, "median-ms")
			}
		})
	}
	// The same three E2B requests the JS SDK sends, from Go: the E2B layer's own cost, without the
	// JS SDK's client-side work.
	b.Run("e2b-http-go", func(b *testing.B) {
		post := func(path string, hdr map[string]string, body string) (*http.Response, error) {
			req, _ := http.NewRequest("POST", server+path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			return http.DefaultClient.Do(req)
		}
		for b.Loop() {
			var ds []time.Duration
			for range n {
				start := time.Now()
				resp, err := post("/e2b/api/v2/sandboxes", map[string]string{"X-API-KEY": key}, `{"templateID":"code-interpreter-v1"}`)
				if err != nil {
					b.Fatal(err)
				}
				var sb struct{ SandboxID, EnvdAccessToken string }
				json.NewDecoder(resp.Body).Decode(&sb)
				resp.Body.Close()
				resp, err = post("/e2b/sandbox/execute", map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": "49999", "X-Access-Token": sb.EnvdAccessToken}, `{"code":"1+1"}`)
				if err != nil {
					b.Fatal(err)
				}
				out, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.Contains(string(out), `"text":"2"`) {
					b.Fatalf("execute: %s", out)
				}
				req, _ := http.NewRequest("DELETE", server+"/e2b/api/sandboxes/"+sb.SandboxID, nil)
				req.Header.Set("X-API-KEY", key)
				resp, err = http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != http.StatusNoContent {
					b.Fatalf("kill: %v %v", err, resp)
				}
				resp.Body.Close()
				ds = append(ds, time.Since(start))
			}
			slices.Sort(ds)
			b.ReportMetric(float64(ds[n/2].Microseconds())/1000, "median-ms")
		}
	})
	b.Run("agentbox-go", func(b *testing.B) {
		c, err := agentbox.New(server, agentbox.WithAPIKey(key))
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		for b.Loop() {
			var ds []time.Duration
			for range n {
				start := time.Now()
				s, err := c.NewSession(ctx, agentbox.SessionRequest{})
				if err != nil {
					b.Fatal(err)
				}
				res, err := s.Run(ctx, "1+1")
				if err != nil || res.MainResult() == nil || res.MainResult().Text() != "2" {
					b.Fatalf("%v %+v", err, res)
				}
				if err := s.Close(ctx); err != nil {
					b.Fatal(err)
				}
				ds = append(ds, time.Since(start))
			}
			slices.Sort(ds)
			b.ReportMetric(float64(ds[n/2].Microseconds())/1000, "median-ms")
		}
	})
}
