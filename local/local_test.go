package local_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/local"
)

// TestLocalSessionIsKeptByTheRegistry: a local session follows the one session registry's rules
// (dispatch's): a second call while a cell runs is refused as a conflict instead of queueing, and a
// session whose interpreter died is gone.
func TestLocalSessionIsKeptByTheRegistry(t *testing.T) {
	ctx := context.Background()
	box, err := local.New(ctx, local.WithPoolSize(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer box.Close(ctx)
	s, err := box.NewSession(ctx, api.Limits{TimeoutMS: 1500})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	done := make(chan *api.Result)
	go func() {
		for { // the probes below may hold the session for a moment
			res, err := s.Run(ctx, "while True: pass")
			if errdefs.ClassOf(err) != errdefs.Conflict {
				done <- res
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Run(ctx, "1")
		if errdefs.ClassOf(err) == errdefs.Conflict {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a call while a cell runs: %v, want a conflict", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if res := <-done; res == nil || !res.TimedOut {
		t.Fatalf("the busy cell: %+v, want a timeout", res)
	}
	if _, err := s.Run(ctx, "1"); !errors.Is(err, tier.ErrGone) {
		t.Fatalf("a run after the interpreter died: %v, want gone", err)
	}
}
