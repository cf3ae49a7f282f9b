package agentbox_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/entersandbox/agentbox"
)

// waitSettled polls the step list until no snapshot is pending.
func waitSettled(t *testing.T, s *agentbox.Session) *agentbox.StepList {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := s.Steps(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		pending := false
		for _, st := range list.Steps {
			pending = pending || st.Snapshot.State == "pending"
		}
		if !pending || time.Now().After(deadline) {
			return list
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSessionTimeTravel(t *testing.T) {
	ctx := context.Background()
	c, _ := agentbox.New(testServer(), agentbox.WithAPIKey(apiKey))
	s, err := c.NewSession(ctx, agentbox.SessionRequest{Tier: "nano"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	for _, code := range []string{"x = 1\nopen('/tmp/f', 'w').write('one')", "x = 2\nopen('/tmp/f', 'w').write('two')"} {
		if _, err := s.Run(ctx, code); err != nil {
			t.Fatal(err)
		}
	}
	list := waitSettled(t, s)
	if len(list.Steps) != 3 || list.Current != 2 || list.Steps[1].Code == "" {
		t.Fatalf("steps %+v", list)
	}
	det, err := s.Step(ctx, 2)
	if err != nil || det.N != 2 || det.Result == nil {
		t.Fatalf("step 2: %+v %v", det, err)
	}
	info, err := s.Rewind(ctx, 1)
	if err != nil || info.CurrentStep != 3 || s.Info().CurrentStep != 3 {
		t.Fatalf("rewind: %+v %v", info, err)
	}
	if res, _ := s.Run(ctx, "print(x, open('/tmp/f').read())"); res.Stdout != "1 one\n" {
		t.Fatalf("after the rewind: %q", res.Stdout)
	}
	f, err := s.Fork(ctx, agentbox.ForkRequest{Step: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close(ctx)
	if res, _ := f.Run(ctx, "print(x)"); f.ID() == s.ID() || res.Stdout != "2\n" {
		t.Fatalf("fork %s: %q", f.ID(), res.Stdout)
	}
	list = waitSettled(t, s)
	if list.Steps[1].Snapshot.State != "stored" {
		t.Fatalf("step 1: %+v, want a stored snapshot", list.Steps[1].Snapshot)
	}
	if err := s.Pin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if data, err := s.StepFile(ctx, 1, "/tmp/f"); err != nil || string(data) != "one" {
		t.Fatalf("file at step 1: %q %v", data, err)
	}
	if err := s.Pin(ctx, 99); !errors.Is(err, agentbox.ErrNotFound) {
		t.Fatalf("pinning a step that does not exist: %v", err)
	}
	if err := s.Unpin(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Step(ctx, 42); !errors.Is(err, agentbox.ErrNotFound) {
		t.Fatalf("step 42: %v", err)
	}
	if _, err := s.StepFile(ctx, 1, "/tmp/../etc/passwd"); !errors.Is(err, agentbox.ErrInvalidArgument) {
		t.Fatalf("bad path: %v", err)
	}
}
