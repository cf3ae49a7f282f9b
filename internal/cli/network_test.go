package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

func TestNetworkFlags(t *testing.T) {
	yes := true
	cases := []struct {
		name        string
		allow, deny []string
		dlp         string
		inspect     bool
		want        *api.NetworkPolicy
	}{
		{"none is offline", nil, nil, "", false, nil},
		{"allow hosts", []string{"pypi.org", "*.github.com"}, nil, "", false, &api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}, {Host: "*.github.com"}}}},
		{"deny, dlp and inspect", []string{"pypi.org"}, []string{"x.pypi.org"}, "redact", true,
			&api.NetworkPolicy{Allow: []api.HostRule{{Host: "pypi.org"}}, Deny: []api.HostRule{{Host: "x.pypi.org"}}, DLP: "redact", InspectTLS: &yes}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := networkFlags(tc.allow, tc.deny, tc.dlp, tc.inspect); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("networkFlags = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestRunNetworkFlags: run's network flags reach the policy compiler, inside the --policy ceiling.
func TestRunNetworkFlags(t *testing.T) {
	noHeavyCache(t)
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(policy, []byte("allow = [\"pypi.org\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("allow = [\"pypi.org\"]\ndlp = \"sometimes\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"allowed host inside the ceiling", []string{"--policy", policy, "--allow-host", "pypi.org"}, 0, ""},
		{"task URL inside the ceiling", []string{"--policy", policy, "--task", "read https://pypi.org/simple/"}, 0, ""},
		{"no ceiling", []string{"--allow-host", "pypi.org"}, exitInternal, "no network ceiling"},
		{"host outside the ceiling", []string{"--policy", policy, "--allow-host", "evil.com"}, exitInternal, `ceiling:allow: network.allow[0] "evil.com"`},
		{"weaker dlp than the ceiling", []string{"--policy", policy, "--allow-host", "pypi.org", "--dlp", "off"}, exitInternal, "ceiling:dlp_min"},
		{"bad ceiling names file and line", []string{"--policy", bad, "--allow-host", "pypi.org"}, exitUsage, "bad.toml:2: dlp"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), append(append([]string{"run"}, tc.args...), "-"), strings.NewReader("print('ran')"), &out, &errOut)
			if code != tc.code || !strings.Contains(errOut.String(), tc.stderr) {
				t.Fatalf("exit %d stderr %q; want %d with %q", code, errOut.String(), tc.code, tc.stderr)
			}
			if code == 0 && out.String() != "ran\n" {
				t.Fatalf("stdout %q", out.String())
			}
		})
	}
}

func TestServePolicyFlag(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "policy.toml")
	if err := os.WriteFile(bad, []byte("allow = [\n  \"[evil.com]\",\n]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, stderr string
	}{
		{"bad host names the line", bad, "policy.toml:2: allow \"[evil.com]\""},
		{"missing file", filepath.Join(dir, "none.toml"), "none.toml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			for _, cmd := range [][]string{{"serve", "--addr", "127.0.0.1:0"}, {"mcp"}} {
				code := Main(context.Background(), append(cmd, "--policy", tc.file), strings.NewReader(""), &out, &errOut)
				if code != exitUsage || !strings.Contains(errOut.String(), tc.stderr) {
					t.Fatalf("%s: exit %d stderr %q; want %d with %q", cmd[0], code, errOut.String(), exitUsage, tc.stderr)
				}
			}
		})
	}
}

// TestReportNetworkEvents: a terminal run says which connections were refused and why; allowed ones
// are quiet (they are in --json).
func TestReportNetworkEvents(t *testing.T) {
	var out, errOut bytes.Buffer
	e := &env{stdout: &out, stderr: &errOut}
	res := &api.Result{NetworkEvents: []api.NetworkEvent{
		{Host: "pypi.org", Method: "GET", Path: "/simple/", Verdict: api.VerdictAllowed, Rule: "allow:pypi.org"},
		{Host: "evil.com", Method: "POST", Path: "/up", Verdict: api.VerdictDenied, Rule: "default:deny", Reason: "no rule allows POST /up on evil.com"},
	}}
	if err := e.report(res, false); err != nil {
		t.Fatal(err)
	}
	want := "agentbox: network denied POST evil.com/up (default:deny): no rule allows POST /up on evil.com\n"
	if errOut.String() != want || out.Len() != 0 {
		t.Fatalf("stderr %q, want %q", errOut.String(), want)
	}
}
