//go:build !linux

package nano

import (
	"errors"
	"sync/atomic"
)

// Copy-on-write restores need memfds and /proc/self/pagemap (cow_linux.go); elsewhere an image is
// plain bytes and every restore copies it into the region.

// sharedImage is never made on this platform.
type sharedImage struct{}

func newSharedImage(data []byte) (*image, error) { return newImage(data), nil }

func (sh *sharedImage) release() {}

func (sh *sharedImage) mapOnto([]byte, int) error {
	return errors.New("copy-on-write images need Linux")
}

// pagemap is never open on this platform: resetPrivate and eachPrivate always answer that they
// cannot tell.
type pagemap struct{ noScan atomic.Bool }

func openPagemap() *pagemap { return &pagemap{} }

func (pm *pagemap) resetPrivate([]byte, *image, int) bool { return false }

func (pm *pagemap) eachPrivate([]byte, int, func(from, to int)) bool { return false }

func (pm *pagemap) scanPrivate([]byte, int, func(from, to int)) (ok, supported bool) {
	return false, false
}

func (pm *pagemap) close() {}

func dropPrivate([]byte) error { return errors.New("copy-on-write images need Linux") }
