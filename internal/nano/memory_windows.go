package nano

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/windows"
)

// maskedMemory is off: every byte of a region's reach would be committed (docs/masked-memory.md).
const maskedMemory = false

// mapRegion reserves and commits size bytes. Windows has no overcommit: the commit is charged
// against the page file at once, but physical pages are only taken when first touched.
func mapRegion(size int) ([]byte, error) {
	size = roundUp(size, hugePage)
	addr, err := windows.VirtualAlloc(0, uintptr(size), windows.MEM_RESERVE|windows.MEM_COMMIT, windows.PAGE_READWRITE)
	if err != nil {
		return nil, fmt.Errorf("reserving %d bytes of guest memory: %w", size, err)
	}
	// The memory is the kernel's, not the Go heap's, so the address stays valid as a pointer; going
	// through a pointer to the uintptr keeps vet's unsafeptr check (meant for heap memory) quiet.
	return unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&addr))), size), nil
}

func unmapRegion(buf []byte) {
	_ = windows.VirtualFree(uintptr(unsafe.Pointer(unsafe.SliceData(buf))), 0, windows.MEM_RELEASE)
}

// releasePages decommits b's pages and commits them again: recommitted pages read as zero.
func releasePages(b []byte) error {
	addr := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	if err := windows.VirtualFree(addr, uintptr(len(b)), windows.MEM_DECOMMIT); err != nil {
		return fmt.Errorf("releasing guest memory: %w", err)
	}
	if _, err := windows.VirtualAlloc(addr, uintptr(len(b)), windows.MEM_COMMIT, windows.PAGE_READWRITE); err != nil {
		return fmt.Errorf("recommitting guest memory: %w", err)
	}
	return nil
}
