package dispatch

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/entersandbox/agentbox/api"
)

// TestSessionClosedTellsEveryEnd: Config.SessionClosed hears of each session that ends while the
// dispatcher runs, whatever ended it, and of none that Close ends with the dispatcher.
func TestSessionClosedTellsEveryEnd(t *testing.T) {
	var mu sync.Mutex
	var closed []string
	d := New(eng, Config{SessionClosed: func(id string) {
		mu.Lock()
		defer mu.Unlock()
		closed = append(closed, id)
	}})
	told := func(id string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range closed {
			if c == id {
				return true
			}
		}
		return false
	}
	ctx := context.Background()
	start := func(req api.SessionRequest) *Session {
		t.Helper()
		s, err := d.NewSession(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	byClient := start(api.SessionRequest{})
	idle := start(api.SessionRequest{TTLSeconds: 1})
	died := start(api.SessionRequest{Limits: api.Limits{TimeoutMS: 200}})
	open := start(api.SessionRequest{})

	t.Run("closed by its client", func(t *testing.T) {
		byClient.Close()
		if !told(byClient.ID()) {
			t.Fatal("not told")
		}
	})
	t.Run("its sandbox died", func(t *testing.T) {
		died.Run(ctx, "while True: pass", Output{}) // the timeout kills the interpreter
		deadline := time.Now().Add(10 * time.Second)
		for !told(died.ID()) {
			if time.Now().After(deadline) {
				t.Fatal("not told within 10 s")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("idle past its TTL", func(t *testing.T) {
		deadline := time.Now().Add(10 * time.Second)
		for !told(idle.ID()) {
			if time.Now().After(deadline) {
				t.Fatal("not told within 10 s")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("not for those the dispatcher's Close ends", func(t *testing.T) {
		d.Close()
		if told(open.ID()) {
			t.Fatal("told of a session ended by the dispatcher's Close")
		}
		mu.Lock()
		defer mu.Unlock()
		if len(closed) != 3 {
			t.Fatalf("told %d times for 3 ends: %v", len(closed), closed)
		}
	})
}
