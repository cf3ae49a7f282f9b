//go:build linux

package nano

import (
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Long runs make way for short ones (docs/nano-performance.md, "Scheduling"). With the patched
// wazero a running guest holds no Go P, so the engine admits many more guests than cores and the
// kernel shares the CPU between their threads. Sharing alone would make a print(1) wait for its turn
// among every busy guest; instead each run's guest thread starts at the process's priority and is
// lowered to demotedNice once it has used Config.ShortRunCPU of CPU time. The kernel's scheduler
// then gives new runs the CPU first and demoted ones what is left (a demoted thread's weight is a
// tenth of a normal one's, so it always progresses, and has the cores to itself when nothing short
// is running): a two-level feedback queue whose quantum is measured on the thread's own CPU clock.

// demotedNice is the nice value of a guest thread past its quantum: weight 110 against 1024 (the
// kernel's prio_to_weight table), so a long run keeps about a tenth of a short one's share.
const demotedNice = 10

// threadDemotion is supported here.
const threadDemotion = true

// onGuestThread runs fn, a call into a guest of an admitted run, on a goroutine locked to an OS
// thread of its own for the call, and lowers that thread's priority once it has used quantum of CPU
// time. A lowered thread is not given back to the Go runtime: raising a priority again needs
// CAP_SYS_NICE, so the goroutine ends still locked and the runtime retires the thread. That costs a
// thread start per demoted run, which has used at least a quantum of CPU already.
func (e *Engine) onGuestThread(fn func()) {
	done := make(chan any, 1)
	go func() {
		runtime.LockOSThread()
		w := watchThread(e.cfg.ShortRunCPU)
		var crashed any
		func() {
			defer func() { crashed = recover() }()
			fn()
		}()
		if w.stop() {
			e.stats.Demoted.Add(1)
		} else {
			runtime.UnlockOSThread()
		}
		done <- crashed
	}()
	if crashed := <-done; crashed != nil {
		panic(crashed) // fn's panic belongs to the caller's goroutine
	}
}

// threadWatch demotes the calling thread when it has used its quantum of CPU time.
type threadWatch struct {
	tid     int
	clock   int32         // the thread's CPU-time clock, readable from any thread of the process
	base    time.Duration // the thread's CPU time when the watch began (threads are reused)
	quantum time.Duration

	mu      sync.Mutex
	timer   *time.Timer // guarded by mu
	done    bool        // guarded by mu; the call has returned, the thread may no longer be ours
	demoted bool        // guarded by mu
}

// watchThread starts watching the calling thread, which must be locked to its goroutine.
func watchThread(quantum time.Duration) *threadWatch {
	tid := unix.Gettid()
	w := &threadWatch{tid: tid, clock: threadClock(tid), quantum: quantum}
	w.base = cpuTime(w.clock)
	w.mu.Lock()
	// Wall time passes at least as fast as the thread's CPU time, so the quantum cannot be used up
	// before the timer fires; check re-arms it for what is left.
	w.timer = time.AfterFunc(quantum, w.check)
	w.mu.Unlock()
	return w
}

// threadClock is Linux's clock id for one thread's CPU time (MAKE_THREAD_CPUCLOCK(tid,
// CPUCLOCK_SCHED) in the kernel's posix-timers.h), which clock_gettime reads for any thread of the
// calling process.
func threadClock(tid int) int32 { return int32(^uint32(tid)<<3 | 2 | 4) }

func cpuTime(clock int32) time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(clock, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func (w *threadWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return
	}
	used := cpuTime(w.clock) - w.base
	if used < w.quantum {
		w.timer.Reset(w.quantum - used)
		return
	}
	// Lowering a thread's own priority needs no privilege; PRIO_PROCESS with a thread id acts on that
	// thread only.
	if unix.Setpriority(unix.PRIO_PROCESS, w.tid, demotedNice) == nil {
		w.demoted = true
	}
}

// stop ends the watch and reports whether the thread was demoted. It must be called on the watched
// thread before it is unlocked.
func (w *threadWatch) stop() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	w.timer.Stop()
	return w.demoted
}

// threadNice is the nice value of the calling thread, for tests.
func threadNice() (int, error) {
	// getpriority's raw system call answers 20 - nice, so that it is never negative.
	p, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return 0, err
	}
	return 20 - p, nil
}
