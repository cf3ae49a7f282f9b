//go:build linux || darwin

package nano

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapRegion reserves size bytes aligned to a huge page, asking for transparent huge pages where the
// kernel has them: on the virtual machines we run on a first touch costs one fault per 2 MiB instead
// of one per 4 KiB.
func mapRegion(size int) ([]byte, error) {
	size = roundUp(size, hugePage)
	raw, err := unix.Mmap(-1, 0, size+hugePage, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANON|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("reserving %d bytes of guest memory: %w", size, err)
	}
	// unix.Munmap only unmaps whole mappings it made, so trim the misaligned ends with the raw call.
	base := unsafe.Pointer(&raw[0])
	addr := int(uintptr(base))
	head := roundUp(addr, hugePage) - addr
	if head > 0 {
		unix.MunmapPtr(base, uintptr(head))
	}
	if tail := hugePage - head; tail > 0 {
		unix.MunmapPtr(unsafe.Add(base, head+size), uintptr(tail))
	}
	buf := unsafe.Slice((*byte)(unsafe.Add(base, head)), size)
	adviseHugePages(buf)
	return buf, nil
}

func unmapRegion(buf []byte) {
	unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(buf)), uintptr(len(buf)))
}

// releasePages gives b's pages back to the kernel; afterwards b reads as zero.
func releasePages(b []byte) error {
	if !releaseZeroes {
		clear(b) // the advice alone may leave the old bytes in place
	}
	return unix.Madvise(b, releaseAdvice)
}
