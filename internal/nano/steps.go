package nano

// Time travel on the nano tier (docs/time-travel-nano.md): a session's state after a cell is its
// linear memory, its stack pointer and its filesystem. Snapshot stores the 4 KiB pages and files
// that changed since the session's last snapshot as blocks; Restore builds a new sandbox from them,
// the way every sandbox is built from the engine's start-up image.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"reflect"
	"slices"
	"sync"
	"time"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/sys"
	"github.com/zeebo/xxh3"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/pywasm"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/vfs"
)

var (
	_ tier.Snapshotter = (*session)(nil)
	_ tier.Restorer    = (*Engine)(nil)
)

const (
	// fileBlock is how files are cut into blocks: files rarely share 4 KiB pieces, and fewer blocks
	// cost fewer Puts.
	fileBlock = 64 << 10
	// staleName is the device that takes the place of descriptors open at a snapshot (runner.py).
	staleName = "stale"
	// maxOpTimeout bounds a probe or restore call into the guest; they run no program code.
	maxOpTimeout = 30 * time.Second
	// ctxCheckPages is how often (in pages, ~0.1 ms of work) page loops look at their context.
	ctxCheckPages = 256
)

var zeroPageHash = xxh3.Hash128(make([]byte, osPage))

// basePages is what time travel knows of an engine snapshot's image: each page's hash, computed
// once, and the block of each page in every store sessions snapshot into, stored once per store
// (and again if the store has dropped them: see Snapshot). A session starts from these, so its
// pages that still equal the image cost nothing.
type basePages struct {
	hashOnce sync.Once
	hashes   []xxh3.Uint128

	mu     sync.Mutex
	stores []storePages // guarded by mu; the few stores in use, newest last
}

type storePages struct {
	store tier.Blocks // tier.StoreOf the Blocks they were put through
	ids   []tier.BlockID
}

// maxStores bounds the stores whose block ids basePages keeps (a server has one).
const maxStores = 4

func (b *basePages) pageHashes(img *image) []xxh3.Uint128 {
	b.hashOnce.Do(func() {
		b.hashes = make([]xxh3.Uint128, len(img.data)/osPage)
		for i := range b.hashes {
			b.hashes[i] = xxh3.Hash128(img.data[i*osPage : (i+1)*osPage])
		}
	})
	return b.hashes
}

// blockIDs returns the block of each page of img in blocks' store (zero for a zero page), putting
// the pages through blocks the first time.
func (b *basePages) blockIDs(img *image, blocks tier.Blocks) ([]tier.BlockID, error) {
	hashes := b.pageHashes(img)
	store := tier.StoreOf(blocks)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.stores {
		if sameStore(s.store, store) {
			return s.ids, nil
		}
	}
	ids := make([]tier.BlockID, len(hashes))
	for i, h := range hashes {
		page := img.data[i*osPage : (i+1)*osPage]
		if h == zeroPageHash && isZero(page) {
			continue
		}
		id, err := blocks.Put(page)
		if err != nil {
			return nil, fmt.Errorf("storing the start-up image: %w", err)
		}
		ids[i] = id
	}
	if len(b.stores) == maxStores {
		b.stores = slices.Delete(b.stores, 0, 1)
	}
	b.stores = append(b.stores, storePages{store: store, ids: ids})
	return ids, nil
}

// forget drops the block ids kept for store: some of them are no longer stored.
func (b *basePages) forget(store tier.Blocks) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stores = slices.DeleteFunc(b.stores, func(s storePages) bool { return sameStore(s.store, store) })
}

// sameStore reports whether a and b are the same store (tier.StoreOf values). Stores of a type that
// cannot be compared never count as the same: a session then puts its pages again (deduplicated by
// the store).
func sameStore(a, b tier.Blocks) bool {
	if a == nil || b == nil || reflect.TypeOf(a) != reflect.TypeOf(b) || !reflect.TypeOf(a).Comparable() {
		return false
	}
	return a == b
}

// stepState is what a session's last snapshot stored: the hash and block of every page, and the
// blocks of every file version, so that the next snapshot stores only what changed.
type stepState struct {
	store  tier.Blocks // tier.StoreOf the Blocks the ids are in
	hashes []xxh3.Uint128
	ids    []tier.BlockID
	files  map[vfs.Version][]tier.BlockID
	// spare arrays the next snapshot fills, swapped with hashes and ids when it succeeds
	nextHashes []xxh3.Uint128
	nextIDs    []tier.BlockID
	private    []uint64 // scratch for the next snapshot: a bit per page that is a private copy
}

// newStepState starts from an engine snapshot's image: the session's memory began as it.
func newStepState(base *snapshot, blocks tier.Blocks) (*stepState, error) {
	st := &stepState{store: tier.StoreOf(blocks), files: map[vfs.Version][]tier.BlockID{}}
	if base == nil {
		return st, nil
	}
	ids, err := base.pages.blockIDs(base.mem, blocks)
	if err != nil {
		return nil, err
	}
	st.hashes = slices.Clone(base.pages.pageHashes(base.mem))
	st.ids = slices.Clone(ids)
	return st, nil
}

// Snapshot implements tier.Snapshotter: it captures the session's state between cells into blocks.
// A failure leaves the session as it was (its next snapshot stores everything that changed since the
// last one that succeeded). Blocks it names without putting them again (pages and files unchanged
// since the last snapshot, pages equal to the start-up image) are held through tier.View when blocks
// is one; if the store has dropped some (retention, a commit that failed), the snapshot puts all its
// data again.
func (s *session) Snapshot(ctx context.Context, blocks tier.Blocks) (*tier.Snapshot, error) {
	if blocks == nil {
		return nil, errdefs.With(errdefs.InvalidArgument, errors.New("snapshot: no block store"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	slot, err := s.eng.admit(ctx)
	if err != nil {
		return nil, err
	}
	defer slot.done()
	if err := s.usable(); err != nil {
		return nil, err
	}
	st := s.steps
	for attempt := 0; ; attempt++ {
		if st == nil || !sameStore(st.store, tier.StoreOf(blocks)) {
			if st, err = newStepState(s.inst.snap, blocks); err != nil {
				return nil, fmt.Errorf("nano snapshot: %w", err)
			}
		}
		var snap *tier.Snapshot
		snap, err = s.eng.snapshotInstance(ctx, s.inst, st, blocks, slot, s.limits)
		if errors.Is(err, errDropped) && attempt == 0 && !s.inst.dead {
			s.inst.snap.pages.forget(tier.StoreOf(blocks))
			st = nil
			continue
		}
		if s.inst.dead {
			s.closeLocked(context.Background())
		}
		if err != nil {
			return nil, fmt.Errorf("nano snapshot: %w", err)
		}
		s.steps = st
		return snap, nil
	}
}

// errDropped says that the store no longer has blocks a snapshot would name.
var errDropped = errors.New("the store no longer has blocks stored by earlier snapshots")

// probeReply is runner.py's _probe.
type probeReply struct {
	Variables []api.Variable `json:"variables"`
	FDs       []int          `json:"fds"`
	Cwd       string         `json:"cwd"`
}

// snapshotInstance stores inst's state through blocks (of st's store) and advances st to it when it
// succeeds.
func (e *Engine) snapshotInstance(ctx context.Context, inst *instance, st *stepState, blocks tier.Blocks, slot *runSlot, lim api.Limits) (*tier.Snapshot, error) {
	// Stopping the guest mid-probe would end the session's interpreter: the probe (bounded, running no
	// program code) is not cut short; the context is looked at before it and in the page loop.
	if ctx.Err() != nil {
		return nil, fmt.Errorf("snapshot stopped: %w", context.Cause(ctx))
	}
	var probe probeReply
	if err := inst.op(context.WithoutCancel(ctx), slot, lim, map[string]any{"op": "probe"}, &probe); err != nil {
		return nil, err
	}
	state := &nanoState{Key: e.stateKey(), Cwd: probe.Cwd, FDs: probe.FDs}
	snap := &tier.Snapshot{Tier: api.TierNano, Variables: probe.Variables}
	if snap.Variables == nil {
		snap.Variables = []api.Variable{}
	}

	files, err := snapshotFiles(inst.fs, st, blocks, state, snap)
	if err != nil {
		return nil, err
	}

	size := int(inst.mod.Memory().Size())
	mem := inst.mem.bytes(size)
	n := size / osPage
	sp := uint32(inst.mod.ExportedGlobal("__stack_pointer").Get())
	// The C stack grows down from sp (the module is linked --stack-first) and nothing below sp is
	// live between calls: what the cell's deepest calls left there is cleared rather than stored.
	deadPages := min(int(sp)/osPage, n)
	hashes, ids := growTo(st.nextHashes, n), growTo(st.nextIDs, n)
	cache := cacheable(st.store)
	// Pages still shared with the start-up image read as it: their hashes are known. Only the
	// private copies (a few hundred of some 3,000 pages) are hashed.
	st.private = growTo(st.private, (n+63)/64)
	var baseHashes []xxh3.Uint128
	known := inst.snap != nil && inst.mem.privatePages(inst.snap.mem, size, st.private)
	if known {
		baseHashes = inst.snap.pages.pageHashes(inst.snap.mem)
	}
	for i := range n {
		if i%ctxCheckPages == 0 && ctx.Err() != nil {
			return nil, fmt.Errorf("snapshot stopped: %w", context.Cause(ctx))
		}
		page := mem[i*osPage : (i+1)*osPage]
		var h xxh3.Uint128
		switch {
		case !known || st.private[i/64]&(1<<(i%64)) != 0:
			h = xxh3.Hash128(page)
		case i < len(baseHashes):
			h = baseHashes[i]
		default:
			h = zeroPageHash // untouched memory past the image
		}
		if i < deadPages && h != zeroPageHash {
			clear(page)
			h = zeroPageHash
		}
		if i < len(st.hashes) && st.hashes[i] == h {
			hashes[i], ids[i] = h, st.ids[i]
			continue
		}
		var id tier.BlockID
		if h != zeroPageHash || !isZero(page) {
			if id, err = blocks.Put(page); err != nil {
				return nil, fmt.Errorf("storing memory page %d: %w", i, err)
			}
			if cache {
				e.pages.put(st.store, id, page, h)
			}
		}
		hashes[i], ids[i] = h, id
	}
	state.MemSize = uint32(size)
	state.SP = sp
	state.Pages = ids
	snap.Blocks = state.blockList()
	if v, ok := blocks.(tier.View); ok && !v.Hold(snap.Blocks) {
		return nil, errDropped
	}
	snap.State = state.encode()

	st.hashes, st.nextHashes = hashes, st.hashes
	st.ids, st.nextIDs = ids, st.ids
	st.files = files
	return snap, nil
}

func growTo[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// snapshotFiles records the writable tree in state and snap, storing the content of the files whose
// version the last snapshot did not store. It returns the blocks of every file version now present.
func snapshotFiles(sfs *vfs.FS, st *stepState, blocks tier.Blocks, state *nanoState, snap *tier.Snapshot) (map[vfs.Version][]tier.BlockID, error) {
	files := make(map[vfs.Version][]tier.BlockID, len(st.files))
	snap.Files = []api.FileInfo{}
	err := sfs.Tree(func(e vfs.TreeEntry, data []byte) error {
		rec := fileRecord{Path: e.Path, Mode: e.Mode, Mtime: e.Mtime, Atime: e.Atime, Target: e.Target, LinkOf: e.LinkOf, Size: e.Size}
		if e.Mode.IsRegular() && e.LinkOf == "" {
			ids, ok := st.files[e.Version]
			if !ok {
				ids = make([]tier.BlockID, 0, (len(data)+fileBlock-1)/fileBlock)
				for off := 0; off < len(data); off += fileBlock {
					id, err := blocks.Put(data[off:min(off+fileBlock, len(data))])
					if err != nil {
						return fmt.Errorf("storing %s: %w", e.Path, err)
					}
					ids = append(ids, id)
				}
			}
			files[e.Version] = ids
			rec.Blocks = ids
		}
		state.Files = append(state.Files, rec)
		info := api.FileInfo{Name: path.Base(e.Path), Path: e.Path, Size: e.Size, IsDir: e.Mode.IsDir(),
			ModTime: time.Unix(0, e.Mtime).UTC().Format(time.RFC3339Nano)}
		if e.Mode&fs.ModeSymlink != 0 {
			info.Size = int64(len(e.Target))
		}
		snap.Files = append(snap.Files, info)
		if e.Opens > 0 {
			snap.OpenFiles = append(snap.OpenFiles, e.Path)
		}
		return nil
	})
	return files, err
}

// stateKey names what a snapshot's memory is only meaningful to: the interpreter build and the
// runner, whose code and protocol are in that memory.
func (e *Engine) stateKey() string { return stateKey() }

var stateKey = sync.OnceValue(func() string {
	h := sha256.New()
	h.Write([]byte(pywasm.BuildKey()))
	h.Write([]byte{0})
	h.Write(runnerSource)
	return hex.EncodeToString(h.Sum(nil))[:32]
})

// Restore implements tier.Restorer: a new session in the state snap describes. Its memory is
// assembled in a recycled region from the engine's start-up image and the pages that differ from
// it, its files are rebuilt from their blocks, and the runner then takes the descriptors that were
// open (they fail with EBADF); its first run reseeds random.
func (e *Engine) Restore(ctx context.Context, snap *tier.Snapshot, blocks tier.Blocks, limits api.Limits) (tier.Session, error) {
	switch {
	case snap == nil || blocks == nil:
		return nil, errdefs.With(errdefs.InvalidArgument, errors.New("restore: no snapshot or no block store"))
	case snap.Tier != api.TierNano:
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("restore: a %q snapshot cannot be restored on the nano tier", snap.Tier))
	}
	state, err := decodeState(snap.State)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if state.Key != e.stateKey() {
		return nil, errdefs.With(errdefs.Conflict, errors.New("restore: the snapshot was taken with another build of the nano interpreter or runner; it cannot be restored by this server"))
	}
	lim, err := e.Limits(limits)
	if err != nil {
		return nil, err
	}
	if need := uint64(state.MemSize); need > uint64(lim.MemoryLimitMB)<<20 || need > e.reserve {
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("restore: the snapshot's interpreter holds %d MiB of memory, more than the %d MiB memory limit", need>>20, lim.MemoryLimitMB))
	}
	var steps *stepState
	s, err := e.startSession(ctx, lim, func(ctx context.Context) (*instance, error) {
		slot, err := e.admit(ctx)
		if err != nil {
			return nil, err
		}
		defer slot.done()
		inst, st, err := e.restoreState(ctx, state, blocks, slot, lim)
		steps = st
		return inst, err
	})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.steps = steps
	s.mu.Unlock()
	return s, nil
}

// restoreState makes a sandbox in state and the step state its session's next snapshot starts from.
func (e *Engine) restoreState(ctx context.Context, state *nanoState, blocks tier.Blocks, slot *runSlot, lim api.Limits) (*instance, *stepState, error) {
	base := e.snap.Load()
	if base == nil {
		return nil, nil, errdefs.With(errdefs.Unavailable, ErrClosed)
	}
	st, err := newStepState(base, blocks)
	if err != nil {
		return nil, nil, fmt.Errorf("restore: %w", err)
	}
	mem, err := e.assemble(ctx, state, base, st, blocks)
	if err != nil {
		return nil, nil, fmt.Errorf("restore: %w", err)
	}
	mem.limit.Store(uint64(lim.MemoryLimitMB) << 20)
	inst, err := e.startAt(ctx, mem, base, state.SP)
	if err != nil {
		return nil, nil, fmt.Errorf("restore: %w", err)
	}
	e.noteUse(base)
	fail := func(err error) (*instance, *stepState, error) {
		inst.close(ctx)
		return nil, nil, fmt.Errorf("restore: %w", err)
	}
	if err := restoreFiles(inst.fs, state.Files, blocks); err != nil {
		return fail(fsError(err)) // over this engine's quotas: too large
	}
	// Python's random (and numpy's) is reseeded by the first run, which tells the runner it is the
	// sandbox's first ("fresh"), as for every sandbox: no program code runs before it.
	if len(state.FDs) > 0 {
		if err := inst.op(ctx, slot, lim, map[string]any{"op": "restored", "fds": state.FDs}, nil); err != nil {
			return fail(err)
		}
	}
	// The rebuilt files are the versions the snapshot stored: the next snapshot need not store them.
	byPath := make(map[string][]tier.BlockID, len(state.Files))
	for _, f := range state.Files {
		if f.Mode.IsRegular() && f.LinkOf == "" {
			byPath[f.Path] = f.Blocks
		}
	}
	if err := inst.fs.Tree(func(e vfs.TreeEntry, _ []byte) error {
		if ids, ok := byPath[e.Path]; ok && e.Mode.IsRegular() && e.LinkOf == "" {
			st.files[e.Version] = ids
		}
		return nil
	}); err != nil {
		return fail(err)
	}
	return inst, st, nil
}

// assemble builds state's memory in a recycled region: the engine's image is copied in as every
// start-up does, and only the pages whose block differs from the image's are read, from the page
// cache when it has them and otherwise from blocks. It
// leaves st's hashes and ids describing the memory as assembled.
func (e *Engine) assemble(ctx context.Context, state *nanoState, base *snapshot, st *stepState, blocks tier.Blocks) (*guestMemory, error) {
	size := int(state.MemSize)
	if size%wasmPage != 0 || size < base.mem.size() || len(state.Pages) != size/osPage {
		return nil, fmt.Errorf("%w: memory of %d bytes in %d pages", tier.ErrCorrupt, size, len(state.Pages))
	}
	r, err := e.regions.get(base.mem)
	if err != nil {
		return nil, err
	}
	hashes := st.hashes
	if n := len(state.Pages); len(hashes) < n {
		hashes = append(hashes, make([]xxh3.Uint128, n-len(hashes))...)
	}
	baseIDs := st.ids
	store := tier.StoreOf(blocks)
	cache := cacheable(store)
	var page []byte
	for i, id := range state.Pages {
		if i%ctxCheckPages == 0 && ctx.Err() != nil {
			e.regions.put(r)
			return nil, fmt.Errorf("restore stopped: %w", context.Cause(ctx))
		}
		if i < len(baseIDs) && baseIDs[i] == id {
			continue // hashes[i] is the image's already
		}
		dst := r.buf[i*osPage : (i+1)*osPage]
		if id == 0 {
			if i < len(baseIDs) {
				clear(dst) // past the image the region reads as zero
			}
			hashes[i] = zeroPageHash
			continue
		}
		if cache {
			if sum, ok := e.pages.get(store, id, dst); ok {
				hashes[i] = sum
				continue
			}
		}
		if page, err = blocks.Get(page[:0], id); err != nil {
			e.regions.put(r)
			return nil, fmt.Errorf("memory page %d: %w", i, err)
		}
		if len(page) != osPage {
			e.regions.put(r)
			return nil, fmt.Errorf("%w: memory page %d is %d bytes", tier.ErrCorrupt, i, len(page))
		}
		copy(dst, page)
		hashes[i] = xxh3.Hash128(page)
		if cache {
			e.pages.put(store, id, page, hashes[i])
		}
	}
	r.dirty = max(r.dirty, size)
	st.hashes, st.ids = hashes, slices.Clone(state.Pages)
	return &guestMemory{pool: e.regions, r: r, initial: size}, nil
}

// restoreFiles rebuilds the writable tree state recorded.
func restoreFiles(sfs *vfs.FS, files []fileRecord, blocks tier.Blocks) error {
	errnoErr := func(op, p string, errno experimentalsys.Errno) error {
		if errno == 0 {
			return nil
		}
		return fmt.Errorf("restoring %s (%s): %w", p, op, errno)
	}
	var data []byte
	for _, f := range files {
		perm := f.Mode.Perm()
		var err error
		switch {
		case f.Mode.IsDir():
			if err = sfs.MkdirAll(f.Path, perm); err == nil {
				err = errnoErr("chmod", f.Path, sfs.Chmod(f.Path, perm))
			}
		case f.Mode&fs.ModeSymlink != 0:
			err = errnoErr("symlink", f.Path, sfs.Symlink(f.Target, f.Path))
		case f.LinkOf != "":
			err = errnoErr("link", f.Path, sfs.Link(f.LinkOf, f.Path))
		case f.Mode.IsRegular():
			data = data[:0]
			for _, id := range f.Blocks {
				if data, err = blocks.Get(data, id); err != nil {
					return fmt.Errorf("file %s: %w", f.Path, err)
				}
			}
			if int64(len(data)) != f.Size {
				return fmt.Errorf("%w: file %s has %d bytes, %d recorded", tier.ErrCorrupt, f.Path, len(data), f.Size)
			}
			if err = sfs.WriteFile(f.Path, data, perm); err == nil {
				err = errnoErr("chmod", f.Path, sfs.Chmod(f.Path, perm))
			}
		default:
			err = fmt.Errorf("%w: %s has file mode %v", tier.ErrCorrupt, f.Path, f.Mode)
		}
		if err != nil {
			return err
		}
	}
	// Times last, children before their directories: making an entry touches its directory.
	for i := len(files) - 1; i >= 0; i-- {
		f := files[i]
		if f.Mode&fs.ModeSymlink != 0 || f.LinkOf != "" {
			continue
		}
		if err := errnoErr("utimes", f.Path, sfs.Utimens(f.Path, f.Atime, f.Mtime)); err != nil {
			return err
		}
	}
	return nil
}

// op calls one of runner.py's host operations ("probe", "restored") and decodes its answer into out
// (nil: none). It runs no program code; the bound is the session's time limit.
func (inst *instance) op(ctx context.Context, slot *runSlot, lim api.Limits, req map[string]any, out any) error {
	if inst.dead {
		return errors.New("sandbox is no longer running")
	}
	payload, err := json.Marshal(req)
	if err != nil {
		return err
	}
	timeout := min(time.Duration(lim.TimeoutMS)*time.Millisecond, maxOpTimeout)
	if timeout <= 0 {
		timeout = maxOpTimeout
	}
	opCtx, cancel := context.WithTimeout(inst.ctx(ctx), timeout)
	defer cancel()
	inst.stdout.reset(lim.MaxOutputBytes, nil, nil)
	inst.stderr.reset(lim.MaxOutputBytes, nil, nil)
	inst.cur = guestCall{ctx: opCtx, slot: slot}
	reply, err := inst.call(opCtx, payload)
	inst.cur = guestCall{}
	if err != nil {
		inst.dead = true // stopped or trapped inside the interpreter: its state is unknown
		return fmt.Errorf("runner %s: %w", req["op"], err)
	}
	var r struct {
		OK    json.RawMessage `json:"ok"`
		Error string          `json:"error"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		return fmt.Errorf("runner %s: unreadable reply: %w", req["op"], err)
	}
	if r.Error != "" {
		return fmt.Errorf("runner %s: %s", req["op"], r.Error)
	}
	if out != nil {
		if err := json.Unmarshal(r.OK, out); err != nil {
			return fmt.Errorf("runner %s: unreadable reply: %w", req["op"], err)
		}
	}
	return nil
}

// staleDevice is /dev/agentbox/stale: after a restore, the runner opens it in the place of every
// descriptor that was open at the snapshot, so that the program's old file objects fail with EBADF
// rather than reach a file that later took the same number.
type staleDevice struct{}

func (staleDevice) Open(experimentalsys.Oflag) (experimentalsys.File, experimentalsys.Errno) {
	return staleFile{}, 0
}

// staleFile is an open of the stale device: everything but Stat and Close fails with EBADF.
type staleFile struct {
	experimentalsys.UnimplementedFile
}

func (staleFile) Stat() (sys.Stat_t, experimentalsys.Errno) {
	return sys.Stat_t{Mode: fs.ModeDevice | fs.ModeCharDevice | 0o444, Nlink: 1}, 0
}
func (staleFile) Read([]byte) (int, experimentalsys.Errno)         { return 0, experimentalsys.EBADF }
func (staleFile) Pread([]byte, int64) (int, experimentalsys.Errno) { return 0, experimentalsys.EBADF }
func (staleFile) Write([]byte) (int, experimentalsys.Errno)        { return 0, experimentalsys.EBADF }
func (staleFile) Pwrite([]byte, int64) (int, experimentalsys.Errno) {
	return 0, experimentalsys.EBADF
}

// Seek has wazero's experimentalsys.File signature (an Errno, not an error), like vfs's file.Seek:
// vet's stdmethods check, which expects io.Seeker's, is off for it in CI.
func (staleFile) Seek(int64, int) (int64, experimentalsys.Errno) { return 0, experimentalsys.EBADF }
func (staleFile) Readdir(int) ([]experimentalsys.Dirent, experimentalsys.Errno) {
	return nil, experimentalsys.EBADF
}
func (staleFile) Truncate(int64) experimentalsys.Errno { return experimentalsys.EBADF }
func (staleFile) Sync() experimentalsys.Errno          { return experimentalsys.EBADF }
func (staleFile) Datasync() experimentalsys.Errno      { return experimentalsys.EBADF }

var _ vfs.Device = staleDevice{}
