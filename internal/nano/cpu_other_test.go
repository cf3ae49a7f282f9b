//go:build !unix

package nano

import "time"

// processCPU is not read here: the CPU-per-run figures read 0.
func processCPU() time.Duration { return 0 }
