package agentbox_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox"
)

// TestSessionCommandWithoutHeavy: on a server without the heavy tier, a command is a clear
// invalid-argument error naming it, and the calls on a background command are not found.
// (internal/heavy/integration's TestCommandsThroughTheSDK runs these methods on the real heavy tier.)
func TestSessionCommandWithoutHeavy(t *testing.T) {
	ctx := context.Background()
	c, err := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.NewSession(ctx, agentbox.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if _, err := s.Command(ctx, agentbox.CommandRequest{Cmd: "ls"}); !errors.Is(err, agentbox.ErrInvalidArgument) || !strings.Contains(err.Error(), "heavy tier") {
		t.Fatalf("%v", err)
	}
	if _, err := s.CommandStream(ctx, agentbox.CommandRequest{Cmd: "ls"}, agentbox.Callbacks{}); !errors.Is(err, agentbox.ErrInvalidArgument) {
		t.Fatalf("%v", err)
	}
	if list, err := s.Commands(ctx); err != nil || len(list) != 0 {
		t.Fatalf("%v %+v", err, list)
	}
	for name, call := range map[string]func() error{
		"state":  func() error { _, err := s.CommandState(ctx, 5); return err },
		"follow": func() error { _, err := s.FollowCommand(ctx, 5, agentbox.Callbacks{}); return err },
		"input":  func() error { return s.CommandInput(ctx, 5, agentbox.CommandInput{Data: "x"}) },
		"kill":   func() error { return s.KillCommand(ctx, 5, "SIGTERM") },
	} {
		if err := call(); !errors.Is(err, agentbox.ErrNotFound) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
