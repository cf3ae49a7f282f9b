package dispatch

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
)

// TestNoHeavyReasonNamesWhyHeavyIsMissing: on a server without the heavy tier, what asks for it
// (tier heavy, packages; runs and sessions) is refused with the reason the server was given (e.g.
// agentbox runs inside gVisor), still as ErrNoHeavy and a 400; without a reason, the install hint.
func TestNoHeavyReasonNamesWhyHeavyIsMissing(t *testing.T) {
	reason := errdefs.With(errdefs.Unavailable, errors.New("the heavy tier cannot run here: nested gVisor"))
	ctx := context.Background()
	asks := []struct {
		name string
		do   func(d *Dispatcher) error
	}{
		{"run on tier heavy", func(d *Dispatcher) error {
			_, err := d.Run(ctx, api.RunRequest{Code: "print(1)", Tier: api.TierHeavy}, Output{})
			return err
		}},
		{"run with packages", func(d *Dispatcher) error {
			_, err := d.Run(ctx, api.RunRequest{Code: "print(1)", Packages: []string{"rich"}}, Output{})
			return err
		}},
		{"session on tier heavy", func(d *Dispatcher) error {
			_, err := d.NewSession(ctx, api.SessionRequest{Tier: api.TierHeavy})
			return err
		}},
	}
	for _, tt := range asks {
		t.Run(tt.name+" with a reason", func(t *testing.T) {
			err := tt.do(newDispatcher(t, Config{NoHeavyReason: reason}))
			if !errors.Is(err, ErrNoHeavy) || errdefs.ClassOf(err) != errdefs.InvalidArgument {
				t.Fatalf("err = %v (class %v), want ErrNoHeavy as invalid_argument", err, errdefs.ClassOf(err))
			}
			if want := `tier "heavy" is not available on this server: the heavy tier cannot run here: nested gVisor`; err.Error() != want {
				t.Fatalf("err = %q, want %q", err, want)
			}
		})
		t.Run(tt.name+" without one", func(t *testing.T) {
			err := tt.do(newDispatcher(t, Config{}))
			if !errors.Is(err, ErrNoHeavy) || !strings.Contains(err.Error(), "build/heavy/build.sh") {
				t.Fatalf("err = %v, want ErrNoHeavy's install hint", err)
			}
		})
	}
}
