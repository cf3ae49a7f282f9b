package heavy

import (
	"os/exec"
	"runtime"
	"sync"
)

// startPinned starts cmd from one OS thread that lives as long as the process.
//
// Linux sends a child its parent-death signal (SysProcAttr.Pdeathsig) when the thread that forked it
// exits, not when the process does. The Go runtime retires a thread whenever a goroutine ends while
// locked to it, and this process does that on purpose: netns hands a thread that could not leave a
// namespace to the runtime that way, nano retires guest threads whose priority it could not raise
// again, and the integration tests enter namespaces so. Every runsc forked on such a thread got
// SIGKILL with it: a pooled sandbox died while it waited, and the run that took it was reported as
// over its memory limit (CI, 2026-12-02). Forked from a thread that is never released, the signal
// means what it is for: the server died.
func startPinned(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	pinnedStarts() <- startRequest{cmd, done}
	return <-done
}

type startRequest struct {
	cmd  *exec.Cmd
	done chan<- error
}

// pinnedStarts is the queue of the forking thread, started on first use. Forks are serialized
// through it; a fork and exec is well under a millisecond against the hundreds runsc takes to start.
var pinnedStarts = sync.OnceValue(func() chan<- startRequest {
	requests := make(chan startRequest)
	go func() {
		runtime.LockOSThread() // never unlocked: the goroutine never ends, so the thread never exits
		for r := range requests {
			r.done <- r.cmd.Start()
		}
	}()
	return requests
})
