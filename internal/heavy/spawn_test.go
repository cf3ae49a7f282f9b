package heavy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestPinnedStartOutlivesTheCallersThread: a child started with Pdeathsig from a goroutine that then
// ends locked to its thread (the runtime retires the thread) is SIGKILLed by Linux when started the
// plain way, which is how pooled runsc sandboxes died idle, and survives when started by startPinned.
// After the caller's thread has gone, the test sends SIGTERM: the child's exit signal says whether
// the SIGKILL of the thread's exit came first.
func TestPinnedStartOutlivesTheCallersThread(t *testing.T) {
	cases := []struct {
		name  string
		start func(*exec.Cmd) error
		want  syscall.Signal
	}{
		{"plain start dies with the thread", (*exec.Cmd).Start, syscall.SIGKILL},
		{"pinned start survives it", startPinned, syscall.SIGTERM},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("sleep", "60")
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			started := make(chan error, 1)
			tid := make(chan int, 1)
			var caller func()
			caller = func() {
				runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
				if syscall.Gettid() == syscall.Getpid() {
					// The runtime never ends the main thread (it parks it instead): try another.
					runtime.UnlockOSThread()
					go caller()
					return
				}
				tid <- syscall.Gettid()
				started <- tc.start(cmd)
			}
			go caller()
			gone := fmt.Sprintf("/proc/self/task/%d", <-tid)
			if err := <-started; err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				if _, err := os.Stat(gone); errors.Is(err, os.ErrNotExist) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the caller's thread %s did not exit", gone)
				}
			}
			cmd.Process.Signal(syscall.SIGTERM)
			err := cmd.Wait()
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("wait: %v", err)
			}
			if got := exit.Sys().(syscall.WaitStatus).Signal(); got != tc.want {
				t.Fatalf("the child ended by %v, want %v", got, tc.want)
			}
		})
	}
}
