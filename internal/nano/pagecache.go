package nano

import (
	"reflect"
	"sync"

	"github.com/zeebo/xxh3"

	"github.com/entersandbox/agentbox/internal/tier"
)

// pageCache keeps copies of the memory pages that session snapshots stored and restores read, by
// store and block id, so that rewinding or forking a recent step copies most of its pages from here
// instead of reading each from the store (a verified, decompressed Get costs several times a
// copy). A store's ids always name the same bytes (tier.Blocks), so a copy never goes stale. The
// oldest copy makes room for a new one. Safe for concurrent use.
type pageCache struct {
	mu    sync.Mutex
	max   int               // pages kept at most; zero: the cache is off
	slab  []byte            // guarded by mu; max pages, allocated at the first put
	keys  []pageKey         // guarded by mu; the key of each slot in use
	sums  []xxh3.Uint128    // guarded by mu; the page hash of each slot in use
	index map[pageKey]int32 // guarded by mu; slot of each key
	next  int               // guarded by mu; the slot a put fills next, once all are in use
}

type pageKey struct {
	blocks tier.Blocks
	id     tier.BlockID
}

func newPageCache(pages int) *pageCache {
	return &pageCache{max: max(pages, 0), index: map[pageKey]int32{}}
}

// cacheable reports whether blocks can key the cache: a store of a type that cannot be compared
// would make the map panic.
func cacheable(blocks tier.Blocks) bool {
	return blocks != nil && reflect.TypeOf(blocks).Comparable()
}

// put keeps a copy of page, the content of block id in blocks, and its hash.
func (c *pageCache) put(blocks tier.Blocks, id tier.BlockID, page []byte, sum xxh3.Uint128) {
	if c.max == 0 || len(page) != osPage {
		return
	}
	k := pageKey{blocks, id}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.index[k]; ok {
		return
	}
	if c.slab == nil {
		c.slab = make([]byte, c.max*osPage)
	}
	var slot int
	if len(c.keys) < c.max {
		slot = len(c.keys)
		c.keys, c.sums = append(c.keys, k), append(c.sums, sum)
	} else {
		slot = c.next
		c.next = (c.next + 1) % c.max
		delete(c.index, c.keys[slot])
		c.keys[slot], c.sums[slot] = k, sum
	}
	c.index[k] = int32(slot)
	copy(c.slab[slot*osPage:], page)
}

// get copies block id of blocks into dst (osPage bytes) and returns its hash, if it has it.
func (c *pageCache) get(blocks tier.Blocks, id tier.BlockID, dst []byte) (xxh3.Uint128, bool) {
	if c.max == 0 {
		return xxh3.Uint128{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	slot, ok := c.index[pageKey{blocks, id}]
	if !ok {
		return xxh3.Uint128{}, false
	}
	copy(dst, c.slab[int(slot)*osPage:(int(slot)+1)*osPage])
	return c.sums[slot], true
}
