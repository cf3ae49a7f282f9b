package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/server"
)

// noHeavyCache points the heavy tier at an empty cache: runsc and the root filesystem are missing.
func noHeavyCache(t *testing.T) {
	t.Setenv("AGENTBOX_HEAVY_CACHE", t.TempDir())
}

// TestRunRouteReasonIsTheDispatchers: `agentbox run` places a program as the API does, with the same
// tier and the same route_reason (one routing implementation, one set of reasons).
func TestRunRouteReasonIsTheDispatchers(t *testing.T) {
	noHeavyCache(t) // the same on both sides, and no runsc needed
	ctx := context.Background()
	n, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(ctx)
	d := dispatch.New(n, dispatch.Config{})
	defer d.Close()
	srv, err := server.New(d, server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()

	for _, tc := range []struct {
		name string
		code string
		args []string    // of agentbox run
		body api.RunBody // of POST /v1/run, Code set from code
	}{
		{name: "standard library imports", code: "import json\nprint(json.dumps(1))", body: api.RunBody{Tier: api.TierAuto}},
		{name: "no tier given", code: "print(1)"},
		{name: "nano asked for", code: "print(1)", args: []string{"--tier", "nano"}, body: api.RunBody{Tier: api.TierNano}},
		{name: "allowed modules pin nano", code: "import json", args: []string{"--allow-module", "json"},
			body: api.RunBody{Limits: api.Limits{AllowedModules: []string{"json"}}}},
		{name: "heavy imports without the heavy tier", code: "import pandas\nprint(1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			Main(ctx, append(append([]string{"run", "--json"}, tc.args...), "-"), strings.NewReader(tc.code), &out, &errOut)
			var fromCLI api.Result
			if err := json.Unmarshal(out.Bytes(), &fromCLI); err != nil {
				t.Fatalf("CLI: %v\nstdout %q\nstderr %q", err, out.String(), errOut.String())
			}

			tc.body.Code = tc.code
			b, _ := json.Marshal(tc.body)
			resp, err := http.Post(ts.URL+"/v1/run", "application/json", bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var fromAPI api.RunResponse
			if err := json.NewDecoder(resp.Body).Decode(&fromAPI); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("API: %d %v", resp.StatusCode, err)
			}
			if fromAPI.RouteReason == "" {
				t.Fatal("the API gave no route_reason")
			}
			if fromCLI.Tier != fromAPI.Tier || fromCLI.RouteReason != fromAPI.RouteReason || fromCLI.FallbackFrom != fromAPI.FallbackFrom {
				t.Fatalf("CLI placed it on %s (%q, fallback from %q)\nAPI on %s (%q, fallback from %q)",
					fromCLI.Tier, fromCLI.RouteReason, fromCLI.FallbackFrom, fromAPI.Tier, fromAPI.RouteReason, fromAPI.FallbackFrom)
			}
		})
	}
}

// TestRunStartsHeavyOnlyWhenUsed: the heavy engine of `agentbox run` starts on the first use the
// dispatcher makes of it (routed there, asked for, or a fallback), never for a run that stays on nano;
// and nano starts only for a run that begins there.
func TestRunStartsHeavyOnlyWhenUsed(t *testing.T) {
	// An installation that passes heavy.Installed; the engine itself is the test's opener.
	cache := t.TempDir()
	for _, f := range []string{"bin/runsc", "rootfs/usr/bin/python3"} {
		p := filepath.Join(cache, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("AGENTBOX_HEAVY_CACHE", cache)
	refused := errors.New("the test does not start heavy")
	for _, tc := range []struct {
		name   string
		code   string
		args   []string
		exit   int
		stdout string // substring
		opened int    // heavy starts
		nano   int    // nano starts
	}{
		{name: "stays on nano", code: "import json\nprint(6 * 7)", exit: 0, stdout: "42", opened: 0, nano: 1},
		{name: "nano asked for", code: "import pandas", args: []string{"--tier", "nano"}, exit: 1, opened: 0, nano: 1},
		{name: "allowed modules pin nano", code: "import pandas", args: []string{"--allow-module", "pandas"}, exit: 1, opened: 0, nano: 1},
		{name: "routed to heavy", code: "import pandas", exit: exitInternal, opened: 1, nano: 0},
		{name: "heavy asked for", code: "print(1)", args: []string{"--tier", "heavy"}, exit: exitInternal, opened: 1, nano: 0},
		{name: "falls back from nano", code: "print('on nano')\n__import__('nu' + 'mpy')", exit: exitInternal, stdout: "on nano", opened: 1, nano: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			opened, nanoStarts := 0, 0
			e := &env{stdin: strings.NewReader(tc.code), stdout: &out, stderr: &errOut, log: slog.New(slog.DiscardHandler),
				openHeavy: func(context.Context) (*heavyEngine, error) { opened++; return nil, refused },
				openNano: func(ctx context.Context) (*nano.Engine, error) {
					nanoStarts++
					return nano.New(ctx, nano.Config{PoolSize: -1, MaxConcurrent: 1})
				}}
			code := e.main(context.Background(), append(append([]string{"run"}, tc.args...), "-"))
			if code != tc.exit || opened != tc.opened || nanoStarts != tc.nano || !strings.Contains(out.String(), tc.stdout) {
				t.Fatalf("exit %d (want %d), heavy started %d times (want %d), nano %d (want %d)\nstdout %q (want %q)\nstderr %q",
					code, tc.exit, opened, tc.opened, nanoStarts, tc.nano, out.String(), tc.stdout, errOut.String())
			}
			if tc.opened > 0 && !strings.Contains(errOut.String(), "starting the heavy tier: "+refused.Error()) {
				t.Fatalf("stderr %q does not say heavy failed to start", errOut.String())
			}
		})
	}
}

// TestRunWithoutHeavyTier: with no heavy tier installed a nano run still succeeds, and one that needs
// heavy says it is missing.
func TestRunWithoutHeavyTier(t *testing.T) {
	noHeavyCache(t)
	for _, tc := range []struct {
		name   string
		code   string
		args   []string
		exit   int
		stdout string // substring
		stderr string // substring
	}{
		{name: "nano run", code: "print(6 * 7)", exit: 0, stdout: "42"},
		{name: "heavy asked for", code: "print(1)", args: []string{"--tier", "heavy"}, exit: exitInternal, stderr: "heavy tier not installed: run build/heavy/build.sh"},
		{name: "heavy imports", code: "import pandas", exit: 1, stderr: "but the heavy tier is not installed (build/heavy/build.sh)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), append(append([]string{"run"}, tc.args...), "-"), strings.NewReader(tc.code), &out, &errOut)
			if code != tc.exit || !strings.Contains(out.String(), tc.stdout) || !strings.Contains(errOut.String(), tc.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, tc.exit, out.String(), tc.stdout, errOut.String(), tc.stderr)
			}
		})
	}
}
