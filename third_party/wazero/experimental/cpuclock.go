package experimental

import (
	"context"

	"github.com/tetratelabs/wazero/internal/expctxkeys"
)

// WithCPUClock makes WASI's clock_time_get answer the process and thread CPU-time clocks (ids 2 and
// 3, which wazero otherwise refuses with EINVAL) with clock(), in nanoseconds, for calls made with
// the returned context (agentbox patch). clock is called on the goroutine that calls the guest.
func WithCPUClock(ctx context.Context, clock func() int64) context.Context {
	return context.WithValue(ctx, expctxkeys.CPUClockKey{}, clock)
}
