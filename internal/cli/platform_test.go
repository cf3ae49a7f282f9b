package cli

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestCrossBuildsLeaveHeavyOut: the binaries for macOS and Windows import neither the heavy tier nor
// its Linux-only network pieces (heavy_other.go stands in for heavy_linux.go), and the Linux binary
// does import them, so the list below is of packages a build really can pull in.
func TestCrossBuildsLeaveHeavyOut(t *testing.T) {
	linuxOnly := []string{
		"github.com/entersandbox/agentbox/internal/heavy",
		"github.com/entersandbox/agentbox/internal/netns",
		"github.com/google/nftables",
		"github.com/vishvananda/netlink",
	}
	cases := []struct {
		goos, goarch string
		wantHeavy    bool
	}{
		{"linux", "amd64", true},
		{"linux", "arm64", true},
		{"darwin", "arm64", false},
		{"darwin", "amd64", false},
		{"windows", "amd64", false},
	}
	for _, c := range cases {
		t.Run(c.goos+"/"+c.goarch, func(t *testing.T) {
			cmd := exec.Command("go", "list", "-deps", "github.com/entersandbox/agentbox/cmd/agentbox")
			cmd.Env = append(os.Environ(), "GOOS="+c.goos, "GOARCH="+c.goarch, "CGO_ENABLED=0")
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("go list: %v", err)
			}
			deps := strings.Fields(string(out))
			for _, p := range linuxOnly {
				if got := slices.Contains(deps, p); got != c.wantHeavy {
					t.Errorf("%s imported: %v, want %v", p, got, c.wantHeavy)
				}
			}
		})
	}
}
