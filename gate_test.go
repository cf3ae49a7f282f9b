package agentbox_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestGoTestPassesWithoutRunsc: on a machine without the heavy tier (a contributor's laptop), `go test`
// of the heavy and MCP hosting integration tests passes and says they were not run and why; with
// AGENTBOX_INTEGRATION=1 (CI), the missing tier fails them instead.
func TestGoTestPassesWithoutRunsc(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs another package's tests; not run with -short")
	}
	gocache := strings.TrimSpace(goCmd(t, ".", nil, "env", "GOCACHE"))
	// The heavy tier looks for runsc and its root filesystem under the user cache directory: an
	// empty one is a machine without them. The build cache stays where it is.
	noHeavy := []string{"XDG_CACHE_HOME=" + t.TempDir(), "GOCACHE=" + gocache, "GOFLAGS=-count=1"}
	env := func(extra ...string) []string {
		var out []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "AGENTBOX_INTEGRATION=") {
				out = append(out, kv)
			}
		}
		return append(append(out, noHeavy...), extra...)
	}
	for _, pkg := range []struct{ dir, notRun string }{
		{"./internal/heavy/integration", "heavy integration tests not run: set AGENTBOX_INTEGRATION=1"},
		{"./internal/mcphost/integration", "mcp hosting integration tests not run: set AGENTBOX_INTEGRATION=1"},
	} {
		t.Run(pkg.dir, func(t *testing.T) {
			goTest := func(extra ...string) (string, error) {
				cmd := exec.Command("go", "test", "-v", pkg.dir)
				cmd.Env = env(extra...)
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			out, err := goTest()
			if err != nil || !strings.Contains(out, pkg.notRun) || !strings.Contains(out, "no tests to run") {
				t.Fatalf("without AGENTBOX_INTEGRATION: %v\n%s", err, out)
			}
			out, err = goTest("AGENTBOX_INTEGRATION=1")
			if err == nil || !strings.Contains(out, "heavy tier not installed") {
				t.Fatalf("with AGENTBOX_INTEGRATION=1 and no runsc: want a failure naming the missing tier, got %v\n%s", err, out)
			}
		})
	}
}
