package integration

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/entersandbox/agentbox"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/mcpserver"
	"github.com/entersandbox/agentbox/internal/nano"
)

// TestCommandsThroughTheSDK: shell commands through `agentbox serve`'s handler and the Go SDK on the
// real heavy tier: an auto session moves to heavy for its first command (with its files and env),
// commands stream, a background command is followed while it runs, fed and killed.
func TestCommandsThroughTheSDK(t *testing.T) {
	ctx := context.Background()
	c, _ := apiServer(t)
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Env: map[string]string{"STAGE": "test"}})
	if err != nil || s.Info().Tier != "nano" {
		t.Fatalf("%v %+v", err, s.Info())
	}
	defer s.Close(ctx)
	if res, err := s.Run(ctx, "import os\nopen('/home/user/from_nano.txt', 'w').write(os.environ['STAGE'])"); err != nil || res.Error != nil {
		t.Fatalf("%v %+v", err, res)
	}
	got, err := s.Command(ctx, agentbox.CommandRequest{Cmd: `cat from_nano.txt; echo " $STAGE"`, Shell: true})
	if err != nil || got.Stdout != "test test\n" || got.ExitCode != 0 {
		t.Fatalf("the auto session's first command: %v %+v", err, got)
	}
	if info, err := s.Refresh(ctx); err != nil || info.Tier != "heavy" || info.MovedFrom != "nano" || !strings.Contains(info.RouteReason, "shell command") {
		t.Fatalf("%v %+v", err, info)
	}

	var mu sync.Mutex
	var streamed strings.Builder
	got, err = s.CommandStream(ctx, agentbox.CommandRequest{Cmd: "sh", Args: []string{"-c", "echo one; echo two >&2; exit 4"}},
		agentbox.Callbacks{Stdout: func(t string) { mu.Lock(); streamed.WriteString(t); mu.Unlock() }})
	if err != nil || got.ExitCode != 4 || got.Stderr != "two\n" || streamed.String() != "one\n" {
		t.Fatalf("%v %+v streamed %q", err, got, streamed.String())
	}

	bg, err := s.Command(ctx, agentbox.CommandRequest{Cmd: `while read line; do echo "got $line"; done`, Shell: true, Background: true})
	if err != nil || bg.State != agentbox.CommandRunning {
		t.Fatalf("%v %+v", err, bg)
	}
	followed := make(chan string, 16)
	done := make(chan *agentbox.Command, 1)
	go func() {
		final, err := s.FollowCommand(ctx, bg.PID, agentbox.Callbacks{Stdout: func(t string) { followed <- t }})
		if err != nil {
			t.Error(err)
		}
		done <- final
	}()
	if err := s.CommandInput(ctx, bg.PID, agentbox.CommandInput{Data: "a\n"}); err != nil {
		t.Fatal(err)
	}
	select {
	case text := <-followed:
		if text != "got a\n" {
			t.Fatalf("followed %q", text)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the follower got nothing within 20 s")
	}
	// A cell runs while the follower is attached.
	if res, err := s.Run(ctx, "print('cell')"); err != nil || res.Stdout != "cell\n" {
		t.Fatalf("a cell while following: %v %+v", err, res)
	}
	if st, err := s.CommandState(ctx, bg.PID); err != nil || st.State != agentbox.CommandRunning || st.Stdout != "got a\n" {
		t.Fatalf("%v %+v", err, st)
	}
	if list, err := s.Commands(ctx); err != nil || len(list) != 1 || list[0].PID != bg.PID {
		t.Fatalf("%v %+v", err, list)
	}
	if err := s.KillCommand(ctx, bg.PID, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case final := <-done:
		if final == nil || final.State != agentbox.CommandKilled || final.Signal != "SIGKILL" {
			t.Fatalf("%+v", final)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the follow did not end within 20 s of the kill")
	}
	if _, err := s.CommandState(ctx, 99999); !errors.Is(err, agentbox.ErrNotFound) {
		t.Fatalf("unknown pid: %v", err)
	}
}

// TestCommandOnNanoSessionNamesHeavy: a session of tier nano refuses commands, naming the heavy tier.
func TestCommandOnNanoSessionNamesHeavy(t *testing.T) {
	ctx := context.Background()
	c, _ := apiServer(t)
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: "nano"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if _, err := s.Command(ctx, agentbox.CommandRequest{Cmd: "ls"}); !errors.Is(err, agentbox.ErrInvalidArgument) || !strings.Contains(err.Error(), `tier "heavy"`) {
		t.Fatalf("%v", err)
	}
}

// TestMCPRunCommand: run_command in a named session sees what run_python wrote there (the session
// moves to heavy with its files), and reports a failing command's exit code as a tool error.
func TestMCPRunCommand(t *testing.T) {
	ctx := context.Background()
	nanoEng, err := nano.New(ctx, nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	d := dispatch.New(nanoEng, dispatch.Config{Heavy: eng})
	t.Cleanup(func() { d.Close(); nanoEng.Close(ctx) })
	serverT, clientT := mcp.NewInMemoryTransports()
	if _, err := mcpserver.New(d, "test").Connect(ctx, serverT, nil); err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test"}, nil).Connect(ctx, clientT, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_python", Arguments: map[string]any{"session": "w", "code": "open('/home/user/n.txt', 'w').write('42')"}}); err != nil || res.IsError {
		t.Fatalf("%v %+v", err, res)
	}
	cases := []struct {
		name    string
		args    map[string]any
		isError bool
		text    string
	}{
		{"sees the cell's file", map[string]any{"session": "w", "cmd": "cat", "args": []string{"n.txt"}}, false, "42"},
		{"a failing command", map[string]any{"session": "w", "cmd": "ls /nowhere", "shell": true}, true, "[exit code 2]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "run_command", Arguments: tc.args})
			if err != nil {
				t.Fatal(err)
			}
			var text string
			for _, c := range res.Content {
				if tc, ok := c.(*mcp.TextContent); ok {
					text += tc.Text
				}
			}
			if res.IsError != tc.isError || !strings.Contains(text, tc.text) {
				t.Fatalf("error %v (want %v), text %q (want %q)", res.IsError, tc.isError, text, tc.text)
			}
		})
	}
}
