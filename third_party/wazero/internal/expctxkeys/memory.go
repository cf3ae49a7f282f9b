package expctxkeys

// MemoryAllocatorKey is a context.Context key for the experimental memory allocator.
type MemoryAllocatorKey struct{}

// MaskedMemoryKey is a context.Context key for compiling with masked memory accesses (agentbox patch).
type MaskedMemoryKey struct{}

// CPUClockKey is a context.Context key for the CPU clock of WASI's process and thread CPU-time
// clocks (agentbox patch).
type CPUClockKey struct{}
