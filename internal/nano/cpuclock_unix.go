//go:build linux || darwin

package nano

import (
	"time"

	"golang.org/x/sys/unix"
)

// threadCPU is the calling thread's CPU time, the guest's process_time (instance.cpuClock); ok is
// false if the clock cannot be read.
func threadCPU() (time.Duration, bool) { return readClock(unix.CLOCK_THREAD_CPUTIME_ID) }

// readClock reads a clock_gettime clock; ok is false if it cannot be read.
func readClock(clock int32) (time.Duration, bool) {
	var ts unix.Timespec
	if unix.ClockGettime(clock, &ts) != nil {
		return 0, false
	}
	return time.Duration(ts.Nano()), true
}
