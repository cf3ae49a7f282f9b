package dispatch

import (
	"context"
	"runtime"
	"testing"

	"github.com/entersandbox/agentbox/internal/nano"
	"github.com/entersandbox/agentbox/internal/tier"
)

// slotted is a tier that says how many runs it executes at once.
type slotted struct {
	toyEngine
	slots int
}

func (s *slotted) Slots() int { return s.slots }

// TestNanoSlotsFollowTheEngine: without NanoSlots the tenants' shares divide the slots the nano
// engine reports, so a tenant alone may keep as many runs in flight as the engine executes at once.
func TestNanoSlotsFollowTheEngine(t *testing.T) {
	own, err := nano.New(context.Background(), nano.Config{PoolSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close(context.Background())
	cases := []struct {
		name string
		cfg  Config
		eng  tier.Engine
		want int
	}{
		{"the nano engine's default", Config{}, own, own.Slots()},
		{"an engine that reports its slots", Config{}, &slotted{slots: 48}, 48},
		{"NanoSlots set", Config{NanoSlots: 3}, &slotted{slots: 48}, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := New(c.eng, c.cfg)
			defer d.Close()
			if d.nanoRuns.slots != c.want {
				t.Fatalf("nano gate slots %d, want %d", d.nanoRuns.slots, c.want)
			}
		})
	}
	t.Run("an engine that does not say", func(t *testing.T) {
		d := New(&toyEngine{name: "nano"}, Config{})
		defer d.Close()
		if d.nanoRuns.slots != runtime.GOMAXPROCS(0) {
			t.Fatalf("nano gate slots %d, want GOMAXPROCS", d.nanoRuns.slots)
		}
	})
	if own.Slots() <= runtime.GOMAXPROCS(0) {
		t.Fatalf("the nano engine executes %d runs at once by default, no more than the cores", own.Slots())
	}
}
