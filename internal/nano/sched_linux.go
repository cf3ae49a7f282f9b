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

// onGuestThread runs fn, a call into a guest of an admitted run, on an OS thread locked to it for
// the call, and lowers that thread's priority once it has used quantum of CPU time.
//
// Where the process may raise a priority again (CAP_SYS_NICE: see mayRestoreNice) the call stays on
// the caller's goroutine and a demoted thread is raised back before it is unlocked. Elsewhere a
// lowered thread must not go back to the Go runtime, so the call runs on a goroutine of its own that
// ends still locked, and the runtime retires the thread: a thread start per demoted run (which has
// used a quantum of CPU already), and a hand-off between goroutines per call, which cost about 17 µs
// of a 0.23 ms pool hit (BenchmarkPoolHit, demotion on against off).
func (e *Engine) onGuestThread(fn func()) {
	if mayRestoreNice() && !e.noRestore.Load() {
		runtime.LockOSThread()
		w := watchThread(e.cfg.ShortRunCPU)
		defer func() {
			if w.stop() {
				e.stats.Demoted.Add(1)
				if err := w.restore(); err != nil {
					// Never seen once the probe passed. The goroutine keeps the lowered thread (the
					// runtime retires it when the goroutine ends); later calls hand off instead.
					e.noRestore.Store(true)
					e.log.Warn("nano: could not raise a demoted guest thread's priority again; guest calls now run on threads of their own", "err", err)
					return
				}
			}
			runtime.UnlockOSThread()
		}()
		fn()
		return
	}
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

// mayRestoreNice reports whether this process may raise a thread's priority back after lowering it,
// found out once by doing so on a thread of its own (which is retired if it cannot be raised).
var mayRestoreNice = sync.OnceValue(func() bool {
	ok := make(chan bool, 1)
	go func() {
		runtime.LockOSThread()
		tid := unix.Gettid()
		nice, err := niceOf(tid)
		if err != nil || nice >= demotedNice {
			ok <- false // never unlocked: the thread's priority is unknown or raised
			return
		}
		if unix.Setpriority(unix.PRIO_PROCESS, tid, demotedNice) != nil {
			ok <- false
			return
		}
		if unix.Setpriority(unix.PRIO_PROCESS, tid, nice) != nil {
			ok <- false // never unlocked: the lowered thread ends with this goroutine
			return
		}
		runtime.UnlockOSThread()
		ok <- true
	}()
	return <-ok
})

// niceOf is a thread's nice value.
func niceOf(tid int) (int, error) {
	// getpriority's raw system call answers 20 - nice, so that it is never negative.
	p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return 0, err
	}
	return 20 - p, nil
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
	nice    int         // guarded by mu: the thread's nice value before it was demoted
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

// cpuTime is a thread's CPU time, or zero if its clock cannot be read.
func cpuTime(clock int32) time.Duration {
	d, _ := readClock(clock)
	return d
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
	nice, err := niceOf(w.tid)
	if err != nil || nice >= demotedNice {
		return // already as low (the whole process runs niced): nothing to lower
	}
	if unix.Setpriority(unix.PRIO_PROCESS, w.tid, demotedNice) == nil {
		w.demoted, w.nice = true, nice
	}
}

// restore gives a demoted thread its priority back; it needs CAP_SYS_NICE. It must be called on the
// watched thread after stop.
func (w *threadWatch) restore() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return unix.Setpriority(unix.PRIO_PROCESS, w.tid, w.nice)
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
func threadNice() (int, error) { return niceOf(0) }
