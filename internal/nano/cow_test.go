package nano

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"testing"
	"time"
)

// TestSharedImageRegionsReadAsTheImage: a region restored from a shared (memfd) image reads as the
// image; what a guest wrote there, inside the image and past it, is gone when the region is handed out
// again, whether the private pages are copied back (pagemap) or dropped (no pagemap); and two regions
// from one image do not see each other's writes.
func TestSharedImageRegionsReadAsTheImage(t *testing.T) {
	data := make([]byte, 64*osPage)
	rand.Read(data[:10*osPage])
	rand.Read(data[40*osPage : 41*osPage]) // zero stretches in between and after
	img, err := newSharedImage(bytes.Clone(data))
	if err != nil {
		t.Fatal(err)
	}
	if img.shared == nil {
		t.Fatal("no memfd on this machine: the copy-on-write path is not tested")
	}
	for _, tc := range []struct {
		name          string
		pagemap, scan bool
	}{
		{"private pages found by PAGEMAP_SCAN and copied back", true, true},
		{"private pages found in pagemap entries and copied back", true, false},
		{"private pages dropped", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newRegionPool(1<<30, 4, false)
			defer p.close()
			if !tc.pagemap {
				p.pm.close()
			}
			p.pm.noScan.Store(!tc.scan)
			if tc.scan && !pagemapScanWorks(p.pm) {
				t.Skip("this kernel has no PAGEMAP_SCAN (Linux 6.7): the pagemap entries are read instead")
			}
			check := func(r *region, what string) {
				t.Helper()
				if !bytes.Equal(r.buf[:len(data)], data) {
					t.Fatalf("%s: region differs from the image", what)
				}
				if !isZero(r.buf[len(data) : len(data)+8*osPage]) {
					t.Fatalf("%s: memory past the image is not zero", what)
				}
			}
			r, err := p.get(img)
			if err != nil {
				t.Fatal(err)
			}
			check(r, "first restore")
			other, err := p.get(img)
			if err != nil {
				t.Fatal(err)
			}
			// A guest writes in a non-zero page, a zero page of the image and past the image.
			for _, off := range []int{3 * osPage, 20*osPage + 17, 63 * osPage, len(data) + 5*osPage} {
				r.buf[off] ^= 0xff
			}
			r.dirty = len(data) + 6*osPage // as Reallocate records a growth
			check(other, "another region from the same image")
			p.put(r)
			p.put(other)
			for i := 0; i < 2; i++ {
				again, err := p.get(img)
				if err != nil {
					t.Fatal(err)
				}
				check(again, "recycled region")
				defer p.put(again)
			}
			if tc.scan && p.pm.noScan.Load() {
				t.Fatal("PAGEMAP_SCAN was given up on: the entries were read instead")
			}
		})
	}
}

// pagemapScanWorks reports whether the kernel answers PAGEMAP_SCAN on pm.
func pagemapScanWorks(pm *pagemap) bool {
	buf, err := mapRegion(1 << 20)
	if err != nil {
		return false
	}
	defer unmapRegion(buf)
	_, supported := pm.scanPrivate(buf, osPage, func(int, int) {})
	return supported
}

// TestBackgroundResetRegionsReadAsTheImage: a region put back over a shared image is reset by the
// pool's background reset, and the next get hands that same region out (no new mapping) reading as
// the image asked for: what the last guest wrote, inside the image and past it, is gone, also when
// the image asked for is another one (the snapshot rotated) or none.
func TestBackgroundResetRegionsReadAsTheImage(t *testing.T) {
	mk := func() ([]byte, *image) {
		data := make([]byte, 32*osPage)
		rand.Read(data[:8*osPage])
		rand.Read(data[20*osPage : 21*osPage])
		img, err := newSharedImage(bytes.Clone(data))
		if err != nil {
			t.Fatal(err)
		}
		if img.shared == nil {
			t.Fatal("no memfd on this machine: the background reset is not tested")
		}
		return data, img
	}
	dataA, imgA := mk()
	dataB, imgB := mk()
	for _, tc := range []struct {
		name string
		next *image
		want []byte // nil: all zero
	}{
		{"same image", imgA, dataA},
		{"another image", imgB, dataB},
		{"no image", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newRegionPool(1<<30, 4, false)
			defer p.close()
			r, err := p.get(imgA)
			if err != nil {
				t.Fatal(err)
			}
			for _, off := range []int{2 * osPage, 15*osPage + 3, 31 * osPage, len(dataA) + 3*osPage} {
				r.buf[off] ^= 0xa5
			}
			r.dirty = len(dataA) + 4*osPage
			p.put(r)
			deadline := time.Now().Add(10 * time.Second)
			for {
				p.mu.Lock()
				done := len(p.clean) == 1 && p.clean[0] == r
				p.mu.Unlock()
				if done {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the background reset did not reset the region put back")
				}
				time.Sleep(time.Millisecond)
			}
			got, err := p.get(tc.next)
			if err != nil {
				t.Fatal(err)
			}
			defer p.put(got)
			if got != r || p.mapped.Load() != 1 {
				t.Fatalf("a new region was mapped (%d in all) instead of the one reset", p.mapped.Load())
			}
			want := tc.want
			if want == nil {
				want = make([]byte, len(dataA))
			}
			if !bytes.Equal(got.buf[:len(want)], want) {
				t.Fatal("the region does not read as the image asked for")
			}
			if !isZero(got.buf[len(want) : len(dataA)+8*osPage]) {
				t.Fatal("memory past the image is not zero")
			}
		})
	}
}

// TestConcurrentRegionsNeverSeeAnotherGuestsWrites: goroutines take regions from one pool, check
// that each reads as the image, scribble over it and past it, and put it back, while the background
// reset recycles them: no region is ever handed out with a previous guest's writes.
func TestConcurrentRegionsNeverSeeAnotherGuestsWrites(t *testing.T) {
	data := make([]byte, 48*osPage)
	rand.Read(data[:16*osPage])
	rand.Read(data[30*osPage : 33*osPage])
	img, err := newSharedImage(bytes.Clone(data))
	if err != nil {
		t.Fatal(err)
	}
	if img.shared == nil {
		t.Fatal("no memfd on this machine: the background reset is not tested")
	}
	p := newRegionPool(1<<30, 3, false)
	defer p.close()
	const workers, rounds = 4, 50
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := range rounds {
				r, err := p.get(img)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(r.buf[:len(data)], data) || !isZero(r.buf[len(data):len(data)+4*osPage]) {
					errs <- fmt.Errorf("worker %d, round %d: a region was handed out with another guest's writes", w, i)
					return
				}
				for pg := (w + i) % 5; pg < 52; pg += 5 {
					r.buf[pg*osPage+w] = byte(0x80 | w)
				}
				r.dirty = max(r.dirty, 52*osPage)
				p.put(r)
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
