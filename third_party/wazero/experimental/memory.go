package experimental

import (
	"context"
	"errors"

	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/internal/expctxkeys"
)

// MemoryAllocator is a memory allocation hook,
// invoked to create a LinearMemory.
type MemoryAllocator interface {
	// Allocate should create a new LinearMemory with the given specification:
	// cap is the suggested initial capacity for the backing []byte,
	// and max the maximum length that will ever be requested.
	//
	// Notes:
	//   - To back a shared memory, the address of the backing []byte cannot
	//     change. This is checked at runtime. Implementations should document
	//     if the returned LinearMemory meets this requirement.
	Allocate(cap, max uint64) LinearMemory
}

// MemoryAllocatorFunc is a convenience for defining inlining a MemoryAllocator.
type MemoryAllocatorFunc func(cap, max uint64) LinearMemory

// Allocate implements MemoryAllocator.Allocate.
func (f MemoryAllocatorFunc) Allocate(cap, max uint64) LinearMemory {
	return f(cap, max)
}

// LinearMemory is an expandable []byte that backs a Wasm linear memory.
type LinearMemory interface {
	// Reallocates the linear memory to size bytes in length.
	//
	// Notes:
	//   - To back a shared memory, Reallocate can't change the address of the
	//     backing []byte (only its length/capacity may change).
	//   - Reallocate may return nil if fails to grow the LinearMemory. This
	//     condition may or may not be handled gracefully by the Wasm module.
	Reallocate(size uint64) []byte
	// Free the backing memory buffer.
	Free()
}

// MaskedMemoryGuard is how many bytes past Mask()+1 a MaskedLinearMemory's buffer must have mapped
// read-write (agentbox patch). A load or store whose static offset plus size fits in it is compiled
// as base + (address & mask) + offset, with no bounds check; a larger static offset keeps the check.
const MaskedMemoryGuard = 8 << 20

// MaskedLinearMemory is a LinearMemory for modules compiled with WithMaskedMemory (agentbox patch).
//
// Mask returns 2^k-1 with 2^k at least the memory's maximum size in bytes. Every byte of the buffers
// Reallocate returns, up to their capacity, which must be at least Mask()+1+MaskedMemoryGuard, must be
// read-write memory of this instance alone: out-of-bounds accesses of the guest land there instead of
// trapping. An implementation that reuses such memory for another instance must zero it first, up to
// the capacity, or the next instance can read what the last one wrote past its length.
type MaskedLinearMemory interface {
	LinearMemory
	Mask() uint64
}

// WithMaskedMemory makes CompileModule compile the module's own (not imported, not shared) memory
// accesses as software fault isolation: base + (address & mask) + offset instead of a bounds check
// that exits to Go (agentbox patch). An out-of-bounds access then wraps into the instance's own
// reservation instead of trapping, which breaks Wasm semantics for programs that rely on the trap,
// and lets a guest write up to Mask()+1+MaskedMemoryGuard bytes whatever its length. Instantiating
// such a module fails unless the MemoryAllocator in the instantiation context returns a
// MaskedLinearMemory whose buffer has that capacity.
func WithMaskedMemory(ctx context.Context) context.Context {
	return context.WithValue(ctx, expctxkeys.MaskedMemoryKey{}, true)
}

// SetMemoryMask narrows the mask of the memory of mod, a module compiled with WithMaskedMemory, to
// mask (agentbox patch), so that its out-of-bounds accesses reach at most mask+1+MaskedMemoryGuard
// bytes, and its memory cannot grow past mask+1. mask must be 2^k-1, at most the MaskedLinearMemory's
// Mask(), and cover the memory's length. It must not be called while a function of mod runs.
func SetMemoryMask(mod api.Module, mask uint64) error {
	m, ok := mod.(interface{ SetMemoryMask(uint64) error })
	if !ok {
		return errors.New("SetMemoryMask: not a module instance of this runtime")
	}
	return m.SetMemoryMask(mask)
}

// WithMemoryAllocator registers the given MemoryAllocator into the given
// context.Context. The context must be passed when initializing a module.
func WithMemoryAllocator(ctx context.Context, allocator MemoryAllocator) context.Context {
	if allocator != nil {
		return context.WithValue(ctx, expctxkeys.MemoryAllocatorKey{}, allocator)
	}
	return ctx
}
