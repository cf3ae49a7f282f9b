package nano

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/tetratelabs/wazero"
	wapi "github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
)

// uleb encodes v as unsigned LEB128.
func uleb(v uint64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		if v >>= 7; v != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

// Static offsets of maskedTestModule's accesses: one within wazero's guard (masked), one past it
// (bounds checked as before).
const (
	nearOffset = experimental.MaskedMemoryGuard - 16
	farOffset  = experimental.MaskedMemoryGuard + 1<<20
)

// maskedTestModule is a module with a memory of one page (no maximum of its own) and raw accesses:
// store(addr, i64), load(addr) i64, loadfar(addr) i64 at farOffset, storenear(addr, i64) at
// nearOffset, grow(pages) i32, and setsp(v), which sets the global exported as __stack_pointer.
func maskedTestModule() []byte {
	const i32, i64 = 0x7f, 0x7e
	body := func(code ...byte) []byte { return append([]byte{byte(len(code) + 1), 0}, code...) } // no locals
	code := []byte{6}
	code = append(code, body(0x20, 0, 0x20, 1, 0x37, 3, 0, 0x0b)...)                                              // store
	code = append(code, body(0x20, 0, 0x29, 3, 0, 0x0b)...)                                                       // load
	code = append(code, body(append(append([]byte{0x20, 0, 0x29, 3}, uleb(farOffset)...), 0x0b)...)...)           // loadfar
	code = append(code, body(0x20, 0, 0x40, 0, 0x0b)...)                                                          // grow
	code = append(code, body(append(append([]byte{0x20, 0, 0x20, 1, 0x37, 3}, uleb(nearOffset)...), 0x0b)...)...) // storenear
	code = append(code, body(0x20, 0, 0x24, 0, 0x0b)...)                                                          // setsp
	mod := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	mod = append(mod, wasmSection(1, 4, 0x60, 2, i32, i64, 0, 0x60, 1, i32, 1, i64, 0x60, 1, i32, 1, i32, 0x60, 1, i32, 0)...)
	mod = append(mod, wasmSection(3, 6, 0, 1, 1, 2, 0, 3)...)
	mod = append(mod, wasmSection(5, 1, 0, 1)...)
	mod = append(mod, wasmSection(6, 1, i32, 1, 0x41, 0x80, 0x80, 0x02, 0x0b)...) // mut i32 = 32768
	exports := []byte{7}
	for i, name := range []string{"store", "load", "loadfar", "grow", "storenear", "setsp"} {
		exports = append(append(append(exports, byte(len(name))), name...), 0, byte(i))
	}
	exports = append(append(append(exports, byte(len("__stack_pointer"))), "__stack_pointer"...), 3, 0)
	mod = append(mod, wasmSection(7, exports...)...)
	return append(mod, wasmSection(10, code...)...)
}

// maskedRig compiles maskedTestModule and instantiates it over guest memories of one region pool,
// whose mask is 4 pages less one.
type maskedRig struct {
	ctx      context.Context
	rt       wazero.Runtime
	masked   wazero.CompiledModule
	pool     *regionPool
	instance int
}

func newMaskedRig(t testing.TB) *maskedRig {
	t.Helper()
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("wazero's compiler, which masks, does not run on %s (its interpreter bounds-checks every access)", runtime.GOARCH)
	}
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigCompiler().WithMemoryLimitPages(4))
	t.Cleanup(func() { rt.Close(ctx) })
	masked, err := rt.CompileModule(experimental.WithMaskedMemory(ctx), maskedTestModule())
	if err != nil {
		t.Fatal(err)
	}
	pool := newRegionPool(4*wasmPage, 4, true)
	t.Cleanup(pool.close)
	return &maskedRig{ctx: ctx, rt: rt, masked: masked, pool: pool}
}

// instantiate makes an instance of compiled over a memory from the rig's pool.
func (r *maskedRig) instantiate(t testing.TB, compiled wazero.CompiledModule) (wapi.Module, *guestMemory) {
	t.Helper()
	mem, err := newGuestMemory(r.pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.instance++
	mod, err := r.rt.InstantiateModule(experimental.WithMemoryAllocator(r.ctx, mem), compiled,
		wazero.NewModuleConfig().WithName(fmt.Sprint("m", r.instance)))
	if err != nil {
		mem.Free()
		t.Fatal(err)
	}
	t.Cleanup(func() { mod.Close(r.ctx) })
	return mod, mem
}

func call(t testing.TB, mod wapi.Module, fn string, args ...uint64) (uint64, error) {
	t.Helper()
	res, err := mod.ExportedFunction(fn).Call(context.Background(), args...)
	if err != nil || len(res) == 0 {
		return 0, err
	}
	return res[0], nil
}

func mustCall(t testing.TB, mod wapi.Module, fn string, args ...uint64) uint64 {
	t.Helper()
	v, err := call(t, mod, fn, args...)
	if err != nil {
		t.Fatalf("%s%v: %v", fn, args, err)
	}
	return v
}

// TestMaskedAccessesStayInTheirRegion (patch 0004): with masked memory an out-of-bounds access wraps
// into the instance's own region instead of trapping; static offsets past wazero's guard are still
// bounds checked; the host's view of the memory keeps its length.
func TestMaskedAccessesStayInTheirRegion(t *testing.T) {
	r := newMaskedRig(t)
	const mask = 4*wasmPage - 1
	if r.pool.mask != mask || r.pool.regionSize != mask+1+experimental.MaskedMemoryGuard {
		t.Fatalf("pool mask %#x, region %d bytes", r.pool.mask, r.pool.regionSize)
	}
	cases := []struct {
		name       string
		addr, seen uint64 // stored at addr, read back at seen
	}{
		{"in bounds", 8, 8},
		{"past the length, within the mask", wasmPage + 8, wasmPage + 8},
		{"past the mask: wraps", mask + 1 + 16, 16},
		{"the top of the address space: wraps", 0xffff_fff8, mask - 7},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mod, _ := r.instantiate(t, r.masked)
			v := uint64(0x1122_3344_0000_0000) + uint64(i)
			mustCall(t, mod, "store", tc.addr, v)
			if got := mustCall(t, mod, "load", tc.seen); got != v {
				t.Fatalf("load(%#x) = %#x, want %#x", tc.seen, got, v)
			}
			if n := mod.Memory().Size(); n != wasmPage {
				t.Fatalf("the memory's length became %d", n)
			}
		})
	}
	t.Run("a static offset within the guard lands in the region", func(t *testing.T) {
		mod, mem := r.instantiate(t, r.masked)
		mustCall(t, mod, "storenear", mask, 0xabcdef)
		at := mask + nearOffset
		if got := binary.LittleEndian.Uint64(mem.r.buf[at:]); got != 0xabcdef {
			t.Fatalf("the region holds %#x at %#x", got, at)
		}
	})
	t.Run("a static offset past the guard is bounds checked", func(t *testing.T) {
		mod, _ := r.instantiate(t, r.masked)
		if _, err := call(t, mod, "loadfar", 0); err == nil || !strings.Contains(err.Error(), "out of bounds memory access") {
			t.Fatalf("loadfar(0) = %v, want an out-of-bounds trap", err)
		}
	})
	t.Run("the stack pointer set past the mask traps", func(t *testing.T) {
		mod, _ := r.instantiate(t, r.masked)
		mustCall(t, mod, "setsp", mask+1-16) // the top of the reach: allowed
		// A C stack that overflows below zero wraps to the top of the address space: checked code traps
		// at its next access, masked code at the global.set.
		if _, err := call(t, mod, "setsp", 0xffff_fff0); err == nil || !strings.Contains(err.Error(), "out of bounds memory access") {
			t.Fatalf("setsp(0xfffffff0) = %v, want an out-of-bounds trap", err)
		}
	})
	t.Run("compiled without masking, the same access traps", func(t *testing.T) {
		checked, err := r.rt.CompileModule(r.ctx, maskedTestModule())
		if err != nil {
			t.Fatal(err)
		}
		mod, _ := r.instantiate(t, checked)
		if _, err := call(t, mod, "store", wasmPage+8, 1); err == nil || !strings.Contains(err.Error(), "out of bounds memory access") {
			t.Fatalf("store past the length = %v, want an out-of-bounds trap", err)
		}
	})
}

// TestMaskedInstancesAreIsolated (patch 0004): what one instance writes past its length is not seen
// by another instance, nor by the next instance its region is reused for.
func TestMaskedInstancesAreIsolated(t *testing.T) {
	r := newMaskedRig(t)
	const secretAt, secret = 2*wasmPage + 64, 0x5ec7e7
	a, memA := r.instantiate(t, r.masked)
	b, _ := r.instantiate(t, r.masked)
	mustCall(t, a, "store", secretAt, secret)
	mustCall(t, a, "storenear", r.pool.mask, secret) // into the guard
	mustCall(t, a, "store", 8, secret)               // in bounds
	if got := mustCall(t, b, "load", secretAt); got != 0 {
		t.Fatalf("another instance reads %#x where the first wrote past its length", got)
	}
	regionA := unsafe.SliceData(memA.r.buf)
	a.Close(r.ctx)
	c, memC := r.instantiate(t, r.masked)
	if unsafe.SliceData(memC.r.buf) != regionA {
		t.Fatal("the next instance did not get the freed region: reuse is not tested")
	}
	for _, at := range []uint64{8, secretAt} {
		if got := mustCall(t, c, "load", at); got != 0 {
			t.Errorf("the region's next instance reads %#x at %#x", got, at)
		}
	}
	if got := binary.LittleEndian.Uint64(memC.r.buf[r.pool.mask+nearOffset:]); got != 0 {
		t.Errorf("the guard still holds %#x for the region's next instance", got)
	}
}

// TestSetMemoryMaskNarrowsTheReach (patch 0004): a narrower mask makes addresses wrap sooner and
// stops growth at mask+1; masks that are not 2^k-1, wider than the allocator's or shorter than the
// length are refused.
func TestSetMemoryMaskNarrowsTheReach(t *testing.T) {
	r := newMaskedRig(t)
	mod, _ := r.instantiate(t, r.masked)
	for _, bad := range []uint64{0, 2*wasmPage - 2, 8*wasmPage - 1, wasmPage/2 - 1} {
		if err := experimental.SetMemoryMask(mod, bad); err == nil {
			t.Errorf("SetMemoryMask(%#x) was accepted", bad)
		}
	}
	if err := experimental.SetMemoryMask(mod, wasmPage-1); err != nil {
		t.Fatal(err)
	}
	mustCall(t, mod, "store", wasmPage+8, 77)
	if got := mustCall(t, mod, "load", 8); got != 77 {
		t.Fatalf("past a one-page mask, the store landed elsewhere: load(8) = %d", got)
	}
	if got := int32(mustCall(t, mod, "grow", 1)); got != -1 {
		t.Fatalf("grow past the mask = %d, want -1", got)
	}
	if err := experimental.SetMemoryMask(mod, 2*wasmPage-1); err != nil {
		t.Fatal(err)
	}
	if got := int32(mustCall(t, mod, "grow", 1)); got != 1 {
		t.Fatalf("grow within the widened mask = %d, want 1 (the old size)", got)
	}
	checked, err := r.rt.CompileModule(r.ctx, maskedTestModule())
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := r.instantiate(t, checked)
	if err := experimental.SetMemoryMask(plain, wasmPage-1); err == nil {
		t.Error("SetMemoryMask on a module compiled without masking was accepted")
	}
}

// TestMaskedModuleNeedsAMaskedAllocator (patch 0004): a masked module does not instantiate over
// wazero's own memory, nor over a memory whose buffer does not cover the mask and guard.
func TestMaskedModuleNeedsAMaskedAllocator(t *testing.T) {
	r := newMaskedRig(t)
	if _, err := r.rt.InstantiateModule(r.ctx, r.masked, wazero.NewModuleConfig().WithName("plain")); err == nil || !strings.Contains(err.Error(), "MaskedLinearMemory") {
		t.Fatalf("instantiation without an allocator: %v, want refused", err)
	}
	short := &shortMemory{buf: make([]byte, 4*wasmPage)}
	if _, err := r.rt.InstantiateModule(experimental.WithMemoryAllocator(r.ctx, short), r.masked, wazero.NewModuleConfig().WithName("short")); err == nil || !strings.Contains(err.Error(), "capacity") {
		t.Fatalf("instantiation over a buffer without the guard: %v, want refused", err)
	}
}

// shortMemory claims a 4-page mask over a buffer of 4 pages: no room for the guard.
type shortMemory struct{ buf []byte }

func (m *shortMemory) Allocate(_, _ uint64) experimental.LinearMemory { return m }
func (m *shortMemory) Reallocate(size uint64) []byte                  { return m.buf[:size] }
func (m *shortMemory) Free()                                          {}
func (m *shortMemory) Mask() uint64                                   { return 4*wasmPage - 1 }

// TestMaskedAndCheckedCodeDoNotShareACacheEntry (patch 0004): the compilation cache keys masked code
// apart from checked code of the same module, so a runtime that asks for checks never runs masked
// code compiled earlier.
func TestMaskedAndCheckedCodeDoNotShareACacheEntry(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("wazero's compiler, which masks, does not run on %s", runtime.GOARCH)
	}
	ctx := context.Background()
	dir := t.TempDir()
	pool := newRegionPool(4*wasmPage, 4, true)
	defer pool.close()
	for _, masked := range []bool{true, false} {
		cache, err := wazero.NewCompilationCacheWithDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigCompiler().WithMemoryLimitPages(4).WithCompilationCache(cache))
		cctx := ctx
		if masked {
			cctx = experimental.WithMaskedMemory(ctx)
		}
		compiled, err := rt.CompileModule(cctx, maskedTestModule())
		if err != nil {
			t.Fatal(err)
		}
		mem, err := newGuestMemory(pool, nil)
		if err != nil {
			t.Fatal(err)
		}
		mod, err := rt.InstantiateModule(experimental.WithMemoryAllocator(ctx, mem), compiled, wazero.NewModuleConfig())
		if err != nil {
			t.Fatal(err)
		}
		_, err = mod.ExportedFunction("store").Call(ctx, wasmPage+8, 1)
		if trapped := err != nil; trapped == masked {
			t.Errorf("masked=%v: a store past the length returned %v", masked, err)
		}
		rt.Close(ctx)
		cache.Close(ctx)
	}
}

// TestRunReachFollowsItsMemoryLimit: a masked engine narrows each run's memory reach to the power of
// two at or above its memory limit, so that what a guest can write past its length stays near the
// limit (docs/masked-memory.md); a checked engine masks nothing.
func TestRunReachFollowsItsMemoryLimit(t *testing.T) {
	if !maskedMemory {
		t.Skipf("masked memory is off on %s", runtime.GOOS)
	}
	ctx := context.Background()
	for _, checked := range []bool{false, true} {
		e, err := New(ctx, Config{PoolSize: -1, CheckedMemory: checked})
		if err != nil {
			t.Fatal(err)
		}
		if e.masked == checked {
			t.Fatalf("CheckedMemory %v: masked %v", checked, e.masked)
		}
		for _, tc := range []struct {
			limitMB int
			want    uint64
		}{{64, 64<<20 - 1}, {100, 128<<20 - 1}, {256, 256<<20 - 1}, {1500, 2048<<20 - 1}} {
			t.Run(fmt.Sprintf("checked=%v/limit=%dMiB", checked, tc.limitMB), func(t *testing.T) {
				s, err := e.NewSession(ctx, api.Limits{MemoryLimitMB: tc.limitMB}, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close(ctx)
				if r, err := s.Run(ctx, "x = bytearray(8 << 20)", tier.Stream{}); err != nil || r.Error != nil {
					t.Fatalf("%v %+v", err, r)
				}
				want := tc.want
				if checked {
					want = 0
				}
				if got := s.(*session).inst.reach; got != want {
					t.Fatalf("reach %#x, want %#x", got, want)
				}
			})
		}
		e.Close(ctx)
	}
}

// TestMaskedResetClearsTheWholeReach: a masked guest may write anywhere in its region, past its
// length and in the guard, without moving the region's dirty mark; the reset that hands the region to
// the next guest makes all of it read as the image, and zero past it.
func TestMaskedResetClearsTheWholeReach(t *testing.T) {
	data := bytes.Repeat([]byte{7}, 8*osPage)
	shared, err := newSharedImage(bytes.Clone(data))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		img  *image
	}{{"copy-on-write image", shared}, {"no image", nil}} {
		t.Run(tc.name, func(t *testing.T) {
			p := newRegionPool(1<<20, 2, true)
			defer p.close()
			r, err := p.get(tc.img)
			if err != nil {
				t.Fatal(err)
			}
			size := tc.img.size()
			wild := []int{size + osPage, 1<<20 - 1, 1 << 20, len(r.buf) - 1}
			for _, off := range wild {
				r.buf[off] = 0xa5
			}
			p.put(r)
			again, err := p.get(tc.img)
			if err != nil {
				t.Fatal(err)
			}
			if unsafe.SliceData(again.buf) != unsafe.SliceData(r.buf) {
				t.Fatal("the region was not reused: its reset is not tested")
			}
			if tc.img != nil && !bytes.Equal(again.buf[:size], data) {
				t.Fatal("the region does not read as the image")
			}
			for _, off := range wild {
				if again.buf[off] != 0 {
					t.Errorf("byte %d of the region (length %d) survived the reset", off, size)
				}
			}
		})
	}
}

// FuzzMaskedStoreLandsInRegion: a masked store to any address, with a static offset of zero or within
// the guard, writes exactly the region's bytes at (address & mask) + offset, and nothing else of the
// region (the whole region is compared with what the stores should have made of it).
func FuzzMaskedStoreLandsInRegion(f *testing.F) {
	r := newMaskedRig(f)
	mod, mem := r.instantiate(f, r.masked)
	mask := r.pool.mask
	for _, addr := range []uint32{0, 8, uint32(mask), uint32(mask + 1), uint32(mask) - 3, 0xffff_fff8, 0xffff_ffff} {
		f.Add(addr, uint64(0x0102_0304_0506_0708), false)
		f.Add(addr, uint64(0xffff_ffff_ffff_ffff), true)
	}
	want := make([]byte, len(mem.r.buf))
	f.Fuzz(func(t *testing.T, addr uint32, v uint64, near bool) {
		fn, at := "store", uint64(addr)&mask
		if near {
			fn, at = "storenear", at+nearOffset
		}
		mustCall(t, mod, fn, uint64(addr), v)
		binary.LittleEndian.PutUint64(want[at:], v)
		if !bytes.Equal(mem.r.buf, want) {
			t.Fatalf("%s(%#x, %#x): the region differs from a write of 8 bytes at %#x", fn, addr, v, at)
		}
	})
}
