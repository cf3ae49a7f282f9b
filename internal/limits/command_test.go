package limits

import (
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

func TestCheckCommand(t *testing.T) {
	cases := []struct {
		name string
		req  api.CommandRequest
		want string // "" means accepted
	}{
		{"a program with args", api.CommandRequest{Cmd: "ls", Args: []string{"-l"}, Cwd: "/tmp", Env: map[string]string{"A": "1"}}, ""},
		{"a shell line", api.CommandRequest{Cmd: "ls | wc -l", Shell: true}, ""},
		{"empty cmd", api.CommandRequest{Cmd: "  "}, "cmd is empty"},
		{"args with shell", api.CommandRequest{Cmd: "ls", Shell: true, Args: []string{"x"}}, "args must be empty"},
		{"NUL in cmd", api.CommandRequest{Cmd: "l\x00s"}, "NUL"},
		{"NUL in an arg", api.CommandRequest{Cmd: "ls", Args: []string{"a", "b\x00"}}, "args[1]"},
		{"negative timeout", api.CommandRequest{Cmd: "ls", TimeoutMS: -1}, "negative"},
		{"relative cwd", api.CommandRequest{Cmd: "ls", Cwd: "tmp"}, "absolute"},
		{"bad env name", api.CommandRequest{Cmd: "ls", Env: map[string]string{"A=B": "1"}}, "'='"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckCommand(tc.req)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (errdefs.ClassOf(err) != errdefs.InvalidArgument || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an invalid-argument error with %q", err, tc.want)
			}
		})
	}
}

func TestCheckEnv(t *testing.T) {
	many := map[string]string{}
	for i := range MaxEnv + 1 {
		many[strings.Repeat("V", i+1)] = ""
	}
	cases := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"none", nil, ""},
		{"some", map[string]string{"PATH": "/bin", "EMPTY": ""}, ""},
		{"empty name", map[string]string{"": "x"}, "empty variable name"},
		{"NUL in a value", map[string]string{"A": "x\x00"}, "NUL"},
		{"too many", many, "more than the 256"},
		{"too large", map[string]string{"A": strings.Repeat("x", MaxEnvBytes)}, "bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckEnv(tc.env)
			if tc.want == "" && err != nil || tc.want != "" && (errdefs.ClassOf(err) != errdefs.InvalidArgument || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestCheckSignal(t *testing.T) {
	for in, want := range map[string]string{"": "SIGKILL", "SIGTERM": "SIGTERM", "term": "SIGTERM", "sigint": "SIGINT", "SIGNOPE": "", "9": ""} {
		got, err := CheckSignal(in)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("CheckSignal(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
