package cli

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/nano"
)

// TestHeavyOffSaysWhyToClients: a server started with --heavy off refuses tier heavy saying so,
// rather than telling the client to install what is installed.
func TestHeavyOffSaysWhyToClients(t *testing.T) {
	fset := flag.NewFlagSet("serve", flag.ContinueOnError)
	tf := addTierFlags(fset, filepath.Join(t.TempDir(), "state"))
	if err := fset.Parse([]string{"--heavy", "off", "--snapshot-dir", "off"}); err != nil {
		t.Fatal(err)
	}
	tiers, err := tf.open(context.Background(), nano.Config{PoolSize: -1}, dispatch.Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer tiers.close(context.Background())
	_, err = tiers.Run(context.Background(), api.RunRequest{Code: "print(1)", Tier: api.TierHeavy}, dispatch.Output{})
	if !errors.Is(err, dispatch.ErrNoHeavy) || !strings.HasSuffix(err.Error(), "the server was started with --heavy off") {
		t.Fatalf("err = %v", err)
	}
}

// TestHeavyAbsentReasonsNameNoHostPaths: the reason clients are told is the sentinel alone.
func TestHeavyAbsentReasonsNameNoHostPaths(t *testing.T) {
	wrapped := errors.Join(errHeavyMissing, errors.New("stat /root/.cache/agentbox/heavy/bin/runsc: no such file or directory"))
	reason := heavyAbsent(wrapped)
	if reason == nil || strings.Contains(reason.Error(), "/root/") {
		t.Fatalf("reason = %v", reason)
	}
	if heavyAbsent(errors.New("some other fault")) != nil {
		t.Fatal("a fault that is not an absent heavy tier was taken for one")
	}
}
