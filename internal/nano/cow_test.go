package nano

import (
	"bytes"
	"crypto/rand"
	"testing"
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
			p := newRegionPool(1<<30, 4)
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
	_, supported := pm.scanPrivate(buf, &image{data: make([]byte, osPage)}, osPage)
	return supported
}
