//go:build !linux

package cli

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/internal/errdefs"
)

// TestHeavyOffLinuxSaysWhere: off Linux the heavy tier is never there, and every way of asking for
// it gets the same error, naming the platform document, classed unavailable.
func TestHeavyOffLinuxSaysWhere(t *testing.T) {
	_, openErr := openHeavy(context.Background(), heavyOptions{}, nil)
	cases := []struct {
		name string
		err  error
	}{
		{"installed", heavyInstalled()},
		{"open", openErr},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !errors.Is(c.err, errHeavyMissing) || !strings.Contains(c.err.Error(), "docs/platforms.md") {
				t.Fatalf("err = %v, want errHeavyMissing naming docs/platforms.md", c.err)
			}
			if errdefs.ClassOf(c.err) != errdefs.Unavailable {
				t.Fatalf("class = %v, want unavailable", errdefs.ClassOf(c.err))
			}
		})
	}
}
