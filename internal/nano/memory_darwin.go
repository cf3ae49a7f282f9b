package nano

import "golang.org/x/sys/unix"

// macOS's MADV_DONTNEED and MADV_FREE are hints that may keep a page's content, so releasePages
// clears the pages first and then lets the kernel reclaim them lazily.
const (
	releaseAdvice = unix.MADV_FREE
	releaseZeroes = false
)

// maskedMemory is off: releasing a region's whole reach would mean clearing it (docs/masked-memory.md).
const maskedMemory = false

// adviseHugePages does nothing: macOS has no transparent huge pages to ask for.
func adviseHugePages([]byte) {}
