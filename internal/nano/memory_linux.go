package nano

import "golang.org/x/sys/unix"

// On Linux MADV_DONTNEED drops private anonymous pages at once and the next touch maps a zero page.
const (
	releaseAdvice = unix.MADV_DONTNEED
	releaseZeroes = true
)

// maskedMemory: guest memory accesses are compiled masked (docs/masked-memory.md). A reset then
// releases the whole reach of a region past what it keeps, which is cheap only where release zeroes
// pages without touching them.
const maskedMemory = true

func adviseHugePages(buf []byte) {
	_ = unix.Madvise(buf, unix.MADV_HUGEPAGE) // an optimisation only: kernels without THP ignore it
}
