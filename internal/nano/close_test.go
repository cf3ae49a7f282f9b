package nano

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// TestCloseStopsRunningCellAtDeadline: Close, given a context that ends, stops a busy loop still
// running in a session cell and in a one-shot run (10-minute time limits) and returns, instead of
// waiting for the cell under its session's lock.
func TestCloseStopsRunningCellAtDeadline(t *testing.T) {
	const loop = "while True: pass"
	lim := api.Limits{TimeoutMS: 600_000}
	cases := []struct {
		name string
		run  func(e *Engine) error
	}{
		{"session cell", func(e *Engine) error {
			s, err := e.NewSession(context.Background(), lim, nil)
			if err != nil {
				return err
			}
			_, err = s.Run(context.Background(), loop, tier.Stream{})
			return err
		}},
		{"run", func(e *Engine) error {
			_, err := e.Run(context.Background(), api.RunRequest{Code: loop, Limits: lim}, tier.Stream{})
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, err := New(context.Background(), Config{PoolSize: -1, MaxConcurrent: 1})
			if err != nil {
				t.Fatal(err)
			}
			ran := make(chan error, 1)
			go func() { ran <- tc.run(e) }()
			for deadline := time.Now().Add(30 * time.Second); e.Stats().Runs.Load() == 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the loop did not start")
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			closed := make(chan error, 1)
			go func() { closed <- e.Close(ctx) }()
			select {
			case err := <-closed:
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Close = %v, want the deadline it was given", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Close waited for the running loop past its deadline")
			}
			select {
			case err := <-ran:
				if errdefs.ClassOf(err) != errdefs.Unavailable {
					t.Errorf("the stopped run returned %v, want errdefs.Unavailable", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the running loop was not stopped")
			}
		})
	}
}
