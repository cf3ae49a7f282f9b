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

// pagemap reads /proc/self/pagemap. Where the kernel has the PAGEMAP_SCAN ioctl (Linux 6.7), it
// asks for the ranges of private pages only: the kernel filters the page tables and returns a few
// ranges, instead of a 64-bit entry per page of the image (some 3,000) for us to read and test.
// Elsewhere it reads the entries.
type pagemap struct {
	fd     atomic.Int64 // -1: unavailable or closed
	noScan atomic.Bool  // PAGEMAP_SCAN is missing (or disabled by a test): read the entries
	bufs   sync.Pool    // of *[]byte, for the entries read
	vecs   sync.Pool    // of *[]pageRegion, for the ranges PAGEMAP_SCAN returns
}

// pmScanArg is the kernel's struct pm_scan_arg (include/uapi/linux/fs.h).
type pmScanArg struct {
	size, flags, start, end, walkEnd, vec, vecLen, maxPages uint64
	categoryInverted, categoryMask, categoryAnyofMask       uint64
	returnMask                                              uint64
}

// pageRegion is the kernel's struct page_region: pages [start, end) with the same categories.
type pageRegion struct{ start, end, categories uint64 }

const (
	pagemapScan   = 0xc0606610 // _IOWR('f', 16, struct pm_scan_arg)
	pageIsFile    = 1 << 2
	pageIsPresent = 1 << 3
	scanRegions   = 256 // ranges asked for per ioctl; more are fetched by calling again
)

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
	return pm.eachPrivate(buf, size, func(from, to int) { copy(buf[from:to], img.data[from:to]) })
}

// eachPrivate calls fn with the byte offsets of each run of pages of buf[:size] that are private
// copies (present, and not pages of a file: written since the mapping was made, or anonymous memory
// that was touched). Every other page of a private mapping of an image still reads as the image;
// one of anonymous memory reads as zero. It reports false when it cannot tell. Safe for concurrent
// use, but not concurrently with close.
func (pm *pagemap) eachPrivate(buf []byte, size int, fn func(from, to int)) bool {
	fd := int(pm.fd.Load())
	if fd < 0 {
		return false
	}
	if !pm.noScan.Load() {
		if ok, supported := pm.scanPrivate(buf, size, fn); supported {
			return ok
		}
		pm.noScan.Store(true)
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
			fn(i*osPage, (i+1)*osPage)
		}
	}
	return true
}

// scanPrivate is eachPrivate through PAGEMAP_SCAN: the ranges of pages that are present and not
// file pages (private copies). supported is false when the kernel lacks the ioctl.
func (pm *pagemap) scanPrivate(buf []byte, size int, fn func(from, to int)) (ok, supported bool) {
	fd := int(pm.fd.Load())
	if fd < 0 {
		return false, true
	}
	vp, _ := pm.vecs.Get().(*[]pageRegion)
	if vp == nil {
		v := make([]pageRegion, scanRegions)
		vp = &v
	}
	defer pm.vecs.Put(vp)
	vec := *vp
	base := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(buf))))
	arg := pmScanArg{
		size:             uint64(unsafe.Sizeof(pmScanArg{})),
		start:            base,
		end:              base + uint64(size),
		vec:              uint64(uintptr(unsafe.Pointer(unsafe.SliceData(vec)))),
		vecLen:           uint64(len(vec)),
		categoryInverted: pageIsFile,
		categoryMask:     pageIsPresent | pageIsFile,
		returnMask:       pageIsPresent,
	}
	for arg.start < arg.end {
		n, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), pagemapScan, uintptr(unsafe.Pointer(&arg)))
		if errno != 0 {
			if errno == unix.ENOTTY || errno == unix.EINVAL {
				return false, false
			}
			return false, true
		}
		for _, r := range vec[:n] {
			fn(int(r.start-base), int(r.end-base))
		}
		if arg.walkEnd <= arg.start {
			return false, true // no progress: never expected, but do not loop
		}
		arg.start = arg.walkEnd
	}
	return true, true
}

func (pm *pagemap) close() {
	if fd := pm.fd.Swap(-1); fd >= 0 {
		unix.Close(int(fd))
	}
}

// dropPrivate drops the private copies among b's pages, a private mapping of an image's memfd: they
// read as the image again, and fault on the next write.
func dropPrivate(b []byte) error { return unix.Madvise(b, unix.MADV_DONTNEED) }
