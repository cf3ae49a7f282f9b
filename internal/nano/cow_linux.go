package nano

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Copy-on-write restores. A snapshot's memory lives in a memfd (shared memory with no name); a
// sandbox's memory begins as a private mapping of it over the start of its region, so a restore does
// not copy the snapshot's ~5.5 MB, and the pages a sandbox only reads stay one copy in the page cache
// however many sandboxes hold them: only the pages a run writes become its own.
//
// A first write to a page costs a fault (about 3 µs here, some 300 per print(1)), more than copying
// it. So a recycled region keeps the private pages its guests wrote: when it is handed out again,
// /proc/self/pagemap says which pages of the mapping are private copies, and only those are copied
// back from the image. The next guest writes them without faulting, and pages nobody writes stay
// shared. Without memfds (old kernels, seccomp) images stay plain bytes and regions are filled by
// copying; without pagemap, the private pages are dropped (MADV_DONTNEED) and fault again.

// sharedImage is the memfd behind an image.
type sharedImage struct {
	fd      int
	mapping []byte // a read-only shared mapping of the whole file: the image's data
}

// newSharedImage returns an image of data whose bytes live in a memfd (data itself is not kept), or
// an ordinary image of data when a memfd cannot be made.
func newSharedImage(data []byte) (*image, error) {
	size := roundUp(len(data), osPage)
	if size != len(data) {
		return nil, fmt.Errorf("snapshot of %d bytes is not a whole number of pages", len(data))
	}
	fd, err := unix.MemfdCreate("agentbox-snapshot", unix.MFD_CLOEXEC)
	if err != nil {
		return newImage(data), nil
	}
	sh := &sharedImage{fd: fd}
	fail := func(err error) (*image, error) {
		sh.release()
		return nil, fmt.Errorf("sharing a snapshot's memory: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fail(err)
	}
	sh.mapping, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(err)
	}
	// Zero stretches stay holes in the file: only the non-zero pages take memory.
	img := newImage(data)
	for _, sp := range img.runs {
		if !sp.zero {
			copy(sh.mapping[sp.off:sp.end], data[sp.off:sp.end])
		}
	}
	if err := unix.Mprotect(sh.mapping, unix.PROT_READ); err != nil {
		return fail(err)
	}
	img.data = sh.mapping
	img.shared = sh
	runtime.AddCleanup(img, func(sh *sharedImage) { sh.release() }, sh)
	return img, nil
}

func (sh *sharedImage) release() {
	if sh.mapping != nil {
		unix.Munmap(sh.mapping)
		sh.mapping = nil
	}
	unix.Close(sh.fd)
}

// mapOnto makes the first size bytes of buf a private, copy-on-write mapping of the image's file,
// discarding whatever buf held there.
func (sh *sharedImage) mapOnto(buf []byte, size int) error {
	_, err := unix.MmapPtr(sh.fd, 0, unsafe.Pointer(unsafe.SliceData(buf)), uintptr(size),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED)
	if err != nil {
		return fmt.Errorf("mapping the snapshot into guest memory: %w", err)
	}
	return nil
}

// pagemap reads /proc/self/pagemap: one 64-bit entry per virtual page.
type pagemap struct {
	fd   atomic.Int64 // -1: unavailable or closed
	bufs sync.Pool    // of *[]byte, for the entries read
}

const (
	pagemapPresent = 1 << 63
	pagemapFile    = 1 << 61 // a file page or shared anonymous memory: not a private copy
)

func openPagemap() *pagemap {
	fd, err := unix.Open("/proc/self/pagemap", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fd = -1
	}
	pm := &pagemap{}
	pm.fd.Store(int64(fd))
	return pm
}

// resetPrivate makes the first size bytes of buf, a private mapping of img, read as img again by
// copying img's bytes over the pages that are private copies. It reports false when it cannot tell
// which those are. Safe for concurrent use, but not concurrently with close.
func (pm *pagemap) resetPrivate(buf []byte, img *image, size int) bool {
	fd := int(pm.fd.Load())
	if fd < 0 {
		return false
	}
	pages := size / osPage
	bp, _ := pm.bufs.Get().(*[]byte)
	if bp == nil || cap(*bp) < pages*8 {
		b := make([]byte, pages*8)
		bp = &b
	}
	defer pm.bufs.Put(bp)
	ents := (*bp)[:pages*8]
	off := int64(uintptr(unsafe.Pointer(unsafe.SliceData(buf))) / osPage * 8)
	for done := 0; done < len(ents); {
		n, err := unix.Pread(fd, ents[done:], off+int64(done))
		if err != nil || n <= 0 {
			return false
		}
		done += n
	}
	for i := 0; i < pages; i++ {
		e := *(*uint64)(unsafe.Pointer(&ents[i*8]))
		if e&pagemapPresent != 0 && e&pagemapFile == 0 {
			copy(buf[i*osPage:(i+1)*osPage], img.data[i*osPage:(i+1)*osPage])
		}
	}
	return true
}

func (pm *pagemap) close() {
	if fd := pm.fd.Swap(-1); fd >= 0 {
		unix.Close(int(fd))
	}
}

// dropPrivate drops the private copies among b's pages, a private mapping of an image's memfd: they
// read as the image again, and fault on the next write.
func dropPrivate(b []byte) error { return unix.Madvise(b, unix.MADV_DONTNEED) }
