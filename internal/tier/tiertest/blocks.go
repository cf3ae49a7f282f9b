// Package tiertest has test doubles of the tier contracts: an in-memory tier.Blocks for the tiers'
// snapshot tests (internal/snapstore is the real store).
package tiertest

import (
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/entersandbox/agentbox/internal/tier"
)

// Blocks is a tier.Blocks in memory, deduplicated by sha256. It counts the bytes it was given and
// the bytes it kept, and can damage or drop a block, for tests and benchmarks. Safe for concurrent use.
type Blocks struct {
	mu    sync.Mutex
	ids   map[[32]byte]tier.BlockID // guarded by mu
	data  map[tier.BlockID][]byte   // guarded by mu
	sums  map[tier.BlockID][32]byte // guarded by mu
	given int64                     // bytes passed to Put; guarded by mu
	kept  int64                     // bytes of distinct blocks; guarded by mu
	fresh []tier.BlockID            // blocks first stored since the last TakeNew; guarded by mu
	next  tier.BlockID              // the last id given; guarded by mu
}

var _ tier.Blocks = (*Blocks)(nil)

// NewBlocks returns an empty store.
func NewBlocks() *Blocks {
	return &Blocks{ids: map[[32]byte]tier.BlockID{}, data: map[tier.BlockID][]byte{}, sums: map[tier.BlockID][32]byte{}}
}

// Put stores a copy of data; equal data gets the same id.
func (m *Blocks) Put(data []byte) (tier.BlockID, error) {
	if len(data) > tier.MaxBlock {
		return 0, fmt.Errorf("tiertest: a block of %d bytes, more than tier.MaxBlock", len(data))
	}
	sum := sha256.Sum256(data)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.given += int64(len(data))
	if id, ok := m.ids[sum]; ok {
		return id, nil
	}
	m.next++
	id := m.next
	m.ids[sum], m.data[id], m.sums[id] = id, append([]byte(nil), data...), sum
	m.kept += int64(len(data))
	m.fresh = append(m.fresh, id)
	return id, nil
}

// Get appends block id to dst, checked against its hash.
func (m *Blocks) Get(dst []byte, id tier.BlockID) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.data[id]
	if !ok || sha256.Sum256(b) != m.sums[id] {
		return dst, fmt.Errorf("tiertest: block %d: %w", id, tier.ErrCorrupt)
	}
	return append(dst, b...), nil
}

// Clone returns a copy of the store whose blocks can be damaged without touching m's.
func (m *Blocks) Clone() *Blocks {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := NewBlocks()
	for sum, id := range m.ids {
		c.ids[sum], c.data[id], c.sums[id] = id, append([]byte(nil), m.data[id]...), sum
	}
	c.given, c.kept, c.next = m.given, m.kept, m.next
	return c
}

// Corrupt flips the first byte of block id (Get then fails its hash check).
func (m *Blocks) Corrupt(id tier.BlockID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b := m.data[id]; len(b) > 0 {
		b[0] ^= 0xff
	}
}

// Drop forgets block id (Get then reports it missing).
func (m *Blocks) Drop(id tier.BlockID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.data, id)
}

// Free forgets block id as a store's garbage collection does: Get reports it missing, and a later
// Put of the same data stores it again under a new id (ids are not reused).
func (m *Blocks) Free(id tier.BlockID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if sum, ok := m.sums[id]; ok && m.ids[sum] == id {
		delete(m.ids, sum)
	}
	delete(m.data, id)
	delete(m.sums, id)
}

// Replace sets block id's content and hash to data: a block the store vouches for but that is not
// what was Put (a length a tier must check itself).
func (m *Blocks) Replace(id tier.BlockID, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.data[id], m.sums[id] = append([]byte(nil), data...), sha256.Sum256(data)
}

// Bytes reports the bytes given to Put and the bytes of the distinct blocks kept.
func (m *Blocks) Bytes() (given, kept int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.given, m.kept
}

// TakeNew returns the blocks first stored since the last call, in order.
func (m *Blocks) TakeNew() [][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([][]byte, 0, len(m.fresh))
	for _, id := range m.fresh {
		out = append(out, m.data[id])
	}
	m.fresh = nil
	return out
}
