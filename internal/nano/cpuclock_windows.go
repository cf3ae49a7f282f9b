package nano

import "time"

// threadCPU reports no clock: on Windows the guest's CPU-time clocks stay unsupported (EINVAL),
// as in upstream wazero.
func threadCPU() (time.Duration, bool) { return 0, false }
