package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/entersandbox/agentbox/internal/pywasm"
)

// Stamped by scripts/release.sh (and the Makefile) with -ldflags -X; empty in a plain `go build`,
// where version falls back to the module's build information.
var (
	buildVersion string // SemVer from the VERSION file, without a leading v
	buildCommit  string // the git commit, with "-dirty" when the tree had changes
	buildDate    string // RFC 3339, UTC
)

func (e *env) version() error {
	info := versionInfo()
	fmt.Fprintf(e.stdout, "agentbox %s\ncommit %s\nbuilt %s\n%s %s/%s\npython.wasm build %s (CPython 3.11, wasm32-wasi)\n",
		info.version, info.commit, info.date, runtime.Version(), runtime.GOOS, runtime.GOARCH, pywasm.BuildKey())
	return nil
}

type buildInfo struct{ version, commit, date string }

// versionInfo is what the binary says it is: the stamped values, else what the Go toolchain
// recorded (a module version, the VCS revision and time when -buildvcs was on), else "unknown".
func versionInfo() buildInfo {
	info := buildInfo{version: buildVersion, commit: buildCommit, date: buildDate}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if info.version == "" {
			info.version = bi.Main.Version // "(devel)" in a checkout
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && info.commit == "":
				info.commit = s.Value
			case s.Key == "vcs.time" && info.date == "":
				info.date = s.Value
			}
		}
	}
	for _, f := range []*string{&info.version, &info.commit, &info.date} {
		if *f == "" {
			*f = "unknown"
		}
	}
	return info
}

// version is the version and, when known, the commit's first 12 characters: what the server, the
// MCP server and the audit log report.
func version() string {
	info := versionInfo()
	if len(info.commit) >= 12 {
		return info.version + " " + info.commit[:12]
	}
	return info.version
}
