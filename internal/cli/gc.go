package cli

import (
	"runtime/debug"
)

// gcPercent is the garbage collector's target the agentbox process runs with unless GOGC is set:
// the Go heap of a nano-tier process is small (guest memory lies outside it, in mapped regions) and
// churns with every sandbox, so collecting at 4x the live heap instead of Go's 2x cut the CPU per
// print(1) run by 12-14% (`BenchmarkThroughput` cpu-µs/run, docs/nano-performance.md) for a few
// tens of MiB of heap.
const gcPercent = 400

// TuneGC sets the collector's target to gcPercent unless the environment's GOGC (read through
// getenv) chose one, and returns the target in force (-1: collection off).
func TuneGC(getenv func(string) string) int {
	if getenv("GOGC") != "" {
		p := debug.SetGCPercent(100) // read the runtime's value (parsed from GOGC) and put it back
		debug.SetGCPercent(p)
		return p
	}
	debug.SetGCPercent(gcPercent)
	return gcPercent
}
