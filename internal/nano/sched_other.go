//go:build !linux

package nano

// Thread demotion needs per-thread CPU clocks and priorities (sched_linux.go); elsewhere runs share
// the CPU at one priority and Config.ShortRunCPU has no effect.

const threadDemotion = false

func (e *Engine) onGuestThread(fn func()) { fn() }
