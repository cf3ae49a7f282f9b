package cli

import (
	"fmt"
	"runtime/debug"

	"github.com/entersandbox/agentbox/internal/pywasm"
)

func (e *env) version() error {
	fmt.Fprintf(e.stdout, "agentbox %s\npython.wasm build %s (CPython 3.11, wasm32-wasi)\n", version(), pywasm.BuildKey())
	return nil
}

// version is the module version and VCS revision the binary was built from.
func version() string {
	v := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		v = bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " " + s.Value[:12]
			}
		}
	}
	return v
}
