package mcpserver

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

// TestRunCommandWithoutHeavy: on a server without the heavy tier, run_command is a tool error naming
// it. (internal/heavy/integration's TestMCPRunCommand runs it on heavy.)
func TestRunCommandWithoutHeavy(t *testing.T) {
	cs := connect(t, "http")
	res, _ := callTool(t, cs, "run_command", map[string]any{"session": "s", "cmd": "ls"})
	if !res.IsError || !strings.Contains(text(res), "heavy tier") {
		t.Fatalf("%+v %q", res, text(res))
	}
}

func TestCommandText(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want string
	}{
		{"exited 0", `{"state":"exited","stdout":"ok\n"}`, "ok\n"},
		{"stderr and exit code", `{"state":"exited","exit_code":2,"stdout":"a","stderr":"b\n"}`, "a\n[stderr]\nb\n\n[exit code 2]"},
		{"timed out", `{"state":"timed_out","exit_code":-1,"signal":"SIGKILL"}`, "\n[stopped at its time limit]"},
		{"killed", `{"state":"killed","exit_code":-1,"signal":"SIGTERM"}`, "\n[killed by SIGTERM]"},
		{"nothing", `{"state":"exited"}`, "(no output)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := commandText(mustCommand(t, tc.in)); got != tc.want {
				t.Fatalf("%q, want %q", got, tc.want)
			}
		})
	}
}

func mustCommand(t *testing.T, s string) *api.Command {
	t.Helper()
	var c api.Command
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		t.Fatal(err)
	}
	return &c
}
