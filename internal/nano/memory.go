package nano

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/tetratelabs/wazero/experimental"
)

const (
	wasmPage = 64 << 10
	osPage   = 4 << 10
	hugePage = 2 << 20

	// warmHeadroom is how much memory past the snapshot a recycled region keeps mapped.
	warmHeadroom = 16 << 20
)

// region is a reservation of address space for one guest memory. Regions are recycled: a page the
// kernel has already mapped for us costs nothing to write again, while first touches of fresh pages
// cost a fault each (about 12 µs on the nested-virtualisation machines we measured; see
// docs/nano-snapshot.md). So a sandbox is restored by copying the snapshot into a recycled region.
// A region belongs to whoever took it from the pool; the pool's lists hand it over under the
// pool's mu.
type region struct {
	buf   []byte // the whole reservation
	dirty int    // bytes from the start that may differ from zero
	// image is the shared image mapped copy-on-write over the start of buf (cow.go), nil if none;
	// once the region is reset that stretch reads as the image again.
	image *image
	// clean: the region reads as cleanAs (nil: zero) and zero past it, so get need not reset it.
	clean   bool
	cleanAs *image
}

// regionPool recycles regions. Its methods are safe for concurrent use.
type regionPool struct {
	mu        sync.Mutex
	pm        *pagemap
	clean     []*region  // guarded by mu: free regions reset already (region.clean)
	used      []*region  // guarded by mu: free regions as their last guest left them
	resetting int        // guarded by mu: free regions resetLoop is resetting
	resetDone *sync.Cond // on mu: resetLoop has finished with a region
	max       int        // guarded by mu: free regions kept; 0 once closed
	reserve   uint64     // bytes a guest memory may grow to
	// mask is what masked guest code ands addresses with at most (0: accesses are bounds checked):
	// the power of two at or above reserve, less one. A region then maps mask+1 plus wazero's guard,
	// every byte of which a guest may write (docs/masked-memory.md).
	mask       uint64
	regionSize int          // bytes mapped per region
	mapped     atomic.Int64 // regions in existence
	closed     atomic.Bool
	wake       chan struct{} // capacity 1: used holds regions for resetLoop
	stop       chan struct{} // closed by close
	loopDone   chan struct{} // closed when resetLoop returns
}

func newRegionPool(reserve uint64, max int, masked bool) *regionPool {
	p := &regionPool{reserve: reserve, max: max, pm: openPagemap(), regionSize: int(reserve),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), loopDone: make(chan struct{})}
	if masked {
		p.mask = reachMask(reserve)
		p.regionSize = int(p.mask + 1 + experimental.MaskedMemoryGuard)
	}
	p.resetDone = sync.NewCond(&p.mu)
	go p.resetLoop()
	return p
}

// image is a memory snapshot with its zero and non-zero stretches marked, so that resetting a region
// clears the zero ones (half the work of copying) instead of copying them.
type image struct {
	data   []byte // read-only; valid while the image is reachable
	runs   []span
	shared *sharedImage // nil: regions are filled by copying data (see cow.go)
}

type span struct {
	off, end int
	zero     bool
}

func newImage(data []byte) *image {
	img := &image{data: data}
	for off := 0; off < len(data); off += osPage {
		end := min(off+osPage, len(data))
		zero := isZero(data[off:end])
		if n := len(img.runs); n > 0 && img.runs[n-1].zero == zero {
			img.runs[n-1].end = end
			continue
		}
		img.runs = append(img.runs, span{off: off, end: end, zero: zero})
	}
	return img
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (img *image) size() int {
	if img == nil {
		return 0
	}
	return len(img.data)
}

// get returns a region whose first bytes equal img (nil: none) and whose remainder reads as zero.
// It prefers a region the background reset has made ready for img already, then one to reset now,
// then, if the background reset holds one, waits for it rather than mapping a new region (whose
// pages would all fault on first touch).
func (p *regionPool) get(img *image) (*region, error) {
	p.mu.Lock()
	var r *region
	for r == nil {
		if n := len(p.clean); n > 0 {
			r, p.clean = p.clean[n-1], p.clean[:n-1]
		} else if n := len(p.used); n > 0 {
			r, p.used = p.used[n-1], p.used[:n-1]
		} else if p.resetting > 0 {
			p.resetDone.Wait()
		} else {
			break
		}
	}
	p.mu.Unlock()
	if r == nil {
		buf, err := mapRegion(p.regionSize)
		if err != nil {
			return nil, err
		}
		p.mapped.Add(1)
		r = &region{buf: buf}
	}
	if !r.clean || r.cleanAs != img {
		if err := p.reset(r, img); err != nil {
			return nil, err
		}
	}
	r.clean = false
	return r, nil
}

// reset makes r read as img (nil: none) and zero past it. On failure r is unmapped.
func (p *regionPool) reset(r *region, img *image) error {
	size := img.size()
	// Memory the last guest grew into must read as zero again. The first warmHeadroom bytes past the
	// image are cleared, keeping their pages mapped for the next guest (almost every run grows a
	// little); anything beyond is given back to the kernel. A masked guest may have written anywhere
	// in the region, past its length too, so all of the region past the cleared part is given back:
	// one madvise, which skips the page tables of what was never touched.
	warm := roundUp(size+warmHeadroom, hugePage)
	kept := max(size, min(r.dirty, warm))
	if r.dirty > size {
		clear(r.buf[size:kept])
	}
	end := roundUp(r.dirty, osPage)
	if p.mask != 0 {
		end = len(r.buf)
	}
	if end > kept {
		if err := releasePages(r.buf[kept:end]); err != nil {
			p.unmap(r)
			return fmt.Errorf("resetting guest memory: %w", err)
		}
	}
	if img != nil && img.shared != nil {
		if r.image == img {
			// The same image is mapped: make the pages the last guest wrote read as the image again,
			// keeping them private so that the next guest writes them without a fault (cow.go).
			if !p.pm.resetPrivate(r.buf, img, size) {
				if err := dropPrivate(r.buf[:size]); err != nil {
					p.unmap(r)
					return fmt.Errorf("resetting guest memory: %w", err)
				}
			}
		} else {
			if err := img.shared.mapOnto(r.buf, size); err != nil {
				p.unmap(r)
				return err
			}
			r.image = img
		}
	} else if img != nil {
		for _, sp := range img.runs {
			if sp.zero {
				if sp.off < r.dirty { // pages past dirty are already zero
					clear(r.buf[sp.off:min(sp.end, r.dirty)])
				}
			} else {
				copy(r.buf[sp.off:sp.end], img.data[sp.off:sp.end])
			}
		}
	}
	r.dirty = size
	r.clean, r.cleanAs = true, img
	return nil
}

// put recycles a region, or unmaps it when enough are kept already. What the guest wrote over a
// shared image is reset by the background reset (resetLoop), off the path that hands regions out;
// other regions are reset by the next get.
func (p *regionPool) put(r *region) {
	r.clean = false
	p.mu.Lock()
	if len(p.clean)+len(p.used)+p.resetting >= p.max {
		p.mu.Unlock()
		p.unmap(r)
		return
	}
	shared := r.image != nil // read before the region is listed: close may unmap it from then on
	p.used = append(p.used, r)
	p.mu.Unlock()
	if shared {
		select {
		case p.wake <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// resetLoop resets the regions put back over a shared image until the pool closes, so that get finds
// them ready.
func (p *regionPool) resetLoop() {
	defer close(p.loopDone)
	for {
		select {
		case <-p.stop:
			return
		case <-p.wake:
		}
		for {
			p.mu.Lock()
			var r *region
			for i := len(p.used) - 1; i >= 0; i-- {
				if p.used[i].image != nil {
					r = p.used[i]
					p.used = append(p.used[:i], p.used[i+1:]...)
					break
				}
			}
			if r == nil {
				p.mu.Unlock()
				break
			}
			p.resetting++
			p.mu.Unlock()
			err := p.reset(r, r.image) // on failure r is unmapped already
			p.mu.Lock()
			p.resetting--
			keep := err == nil && len(p.clean)+len(p.used) < p.max
			if keep {
				p.clean = append(p.clean, r)
			}
			p.resetDone.Broadcast()
			p.mu.Unlock()
			if err == nil && !keep {
				p.unmap(r)
			}
		}
	}
}

func (p *regionPool) unmap(r *region) {
	unmapRegion(r.buf)
	r.buf, r.image = nil, nil
	if p.mapped.Add(-1) == 0 && p.closed.Load() {
		p.pm.close() // no region is left to put back, so nothing reads it any more
	}
}

// trim gives back what an idle engine need not keep: free regions past the first maxFree are unmapped,
// and the others lose the memory they hold beyond keep bytes (the snapshot's size).
func (p *regionPool) trim(keep, maxFree int) {
	from := roundUp(keep, hugePage)
	p.mu.Lock()
	var drop []*region
	if n := len(p.used) + len(p.clean); n > maxFree {
		k := min(n-maxFree, len(p.used)) // the used ones go first: they need a reset anyway
		drop = append(drop, p.used[len(p.used)-k:]...)
		p.used = p.used[:len(p.used)-k]
		if n-k > maxFree {
			drop = append(drop, p.clean[maxFree:]...)
			p.clean = p.clean[:maxFree]
		}
	}
	defer func() {
		p.mu.Unlock()
		for _, r := range drop {
			p.unmap(r)
		}
	}()
	for _, list := range [][]*region{p.used, p.clean} {
		for _, r := range list {
			if r.image != nil {
				// An idle region need not keep private copies of the image's pages; dropped, they read as
				// the image, so a clean region stays clean.
				_ = dropPrivate(r.buf[:r.image.size()])
			}
			if r.dirty > from {
				if err := releasePages(r.buf[from:roundUp(r.dirty, osPage)]); err == nil {
					clear(r.buf[keep:min(from, r.dirty)])
					r.dirty = keep
				}
			}
		}
	}
}

// close unmaps the free regions and stops the background reset; regions in use are unmapped as they
// come back.
func (p *regionPool) close() {
	p.mu.Lock()
	free := append(p.used, p.clean...)
	p.used, p.clean, p.max = nil, nil, 0
	p.mu.Unlock()
	p.closed.Store(true)
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.loopDone // a region it was resetting is unmapped, as max is 0
	for _, r := range free {
		p.unmap(r)
	}
	if p.mapped.Load() == 0 {
		p.pm.close() // else the last region unmapped closes it
	}
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// guestMemory is a sandbox's linear memory in a region. Growing only reslices the reservation, so the
// buffer never moves. The limit is checked at every growth: refusing one makes memory.grow fail in the
// guest, which CPython turns into MemoryError.
type guestMemory struct {
	pool     *regionPool
	r        *region
	initial  int           // bytes present at instantiation (the snapshot's size)
	limit    atomic.Uint64 // bytes the guest may grow to
	exceeded atomic.Bool   // a growth was refused
	freed    atomic.Bool
	keep     bool // Free leaves the region alone: it becomes a snapshot's image
}

// newGuestMemory returns a memory whose content starts as img (nil: empty).
func newGuestMemory(pool *regionPool, img *image) (*guestMemory, error) {
	r, err := pool.get(img)
	if err != nil {
		return nil, err
	}
	m := &guestMemory{pool: pool, r: r, initial: img.size()}
	m.limit.Store(pool.reserve)
	return m, nil
}

// Mask implements experimental.MaskedLinearMemory: the widest mask the guest's code may use.
func (m *guestMemory) Mask() uint64 { return m.pool.mask }

// reachMask is the mask that lets a guest reach n bytes: the power of two at or above n, less one.
func reachMask(n uint64) uint64 { return 1<<bits.Len64(max(n, wasmPage)-1) - 1 }

// Allocate implements experimental.MemoryAllocator: the memory already exists.
func (m *guestMemory) Allocate(_, _ uint64) experimental.LinearMemory { return m }

// Reallocate implements experimental.LinearMemory. The first call, at instantiation, asks for the
// module's minimum; a restored memory is as large as its snapshot, so it answers with that.
func (m *guestMemory) Reallocate(size uint64) []byte {
	size = max(size, uint64(m.initial))
	if size > m.limit.Load() || size > uint64(len(m.r.buf)) {
		m.exceeded.Store(true)
		return nil
	}
	if int(size) > m.r.dirty {
		m.r.dirty = int(size)
	}
	return m.r.buf[:size]
}

// Free implements experimental.LinearMemory: the region goes back to the pool.
func (m *guestMemory) Free() {
	if m.freed.Swap(true) || m.keep {
		return
	}
	m.pool.put(m.r)
}

// privatePages sets bit i of priv (cleared first; (n+63)/64 words for n pages) for each of the first
// size bytes' pages that is a private copy, when the memory is a copy-on-write mapping of img
// (cow.go): every other page then reads as img, or as zero past it. It reports false when the memory is not
// such a mapping or the kernel cannot tell.
func (m *guestMemory) privatePages(img *image, size int, priv []uint64) bool {
	if img == nil || img.shared == nil || m.r.image != img || size > len(m.r.buf) {
		return false
	}
	clear(priv)
	return m.pool.pm.eachPrivate(m.r.buf, size, func(from, to int) {
		for i := from / osPage; i < to/osPage; i++ {
			priv[i/64] |= 1 << (i % 64)
		}
	})
}

// bytes is the memory's current content (valid until Free).
func (m *guestMemory) bytes(size int) []byte { return m.r.buf[:size] }
