package heavy

import (
	"errors"
	"regexp"

	"golang.org/x/sys/unix"

	"github.com/entersandbox/agentbox/internal/errdefs"
)

// ErrNested means agentbox itself runs in a gVisor sandbox (for instance its container image run
// with runsc as the runtime), where runsc cannot start sandboxes of its own: gVisor lets the
// sandbox's Go runtime kill itself where Linux ignores a namespace's init signalling itself, does
// not support MS_UNBINDABLE mounts for the gofer, and neither systrap (its stub cannot be mapped)
// nor ptrace starts (docs/container-image.md has what was measured). Installed and New fail with it
// at once, instead of a server that says it has a heavy tier and fails every heavy request.
var ErrNested = errdefs.With(errdefs.Unavailable, errors.New("the heavy tier cannot run here: this agentbox runs inside a gVisor sandbox, "+
	"and gVisor's runsc does not start sandboxes inside gVisor; run the container with runc and --privileged for the heavy tier (docs/container-image.md)"))

// gvisorLog is how gVisor's made-up kernel log begins (syslog(2) keeps the "<6>" level prefix that
// dmesg(1) strips).
var gvisorLog = regexp.MustCompile(`^(<[0-9]+>)?\[ *0\.0+\] Starting gVisor\.\.\.`)

// underGVisor reports whether this process runs on gVisor's kernel. gVisor answers syslog(2) with a
// short kernel log of its own (under 1 KiB) that starts "Starting gVisor..." at time zero; on Linux
// the buffer holds the last messages of a log that began long before, or reading it is not
// permitted. Both give the tail when the buffer is short, so it holds the whole of gVisor's.
func underGVisor() bool {
	buf := make([]byte, 16<<10)
	n, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	return err == nil && isGVisorLog(buf[:max(n, 0)])
}

func isGVisorLog(b []byte) bool { return gvisorLog.Match(b) }
