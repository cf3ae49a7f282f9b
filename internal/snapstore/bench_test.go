package snapstore

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
)

// pageLike is a 4 KiB page that compresses like interpreter memory (runs of zeros, some structure).
func pageLike(r *rand.Rand) []byte {
	p := make([]byte, 4096)
	for i := 0; i < len(p); i += 8 {
		if r.IntN(3) == 0 {
			binary.LittleEndian.PutUint64(p[i:], r.Uint64()&0x0000_ffff_00ff_00ff)
		}
	}
	return p
}

// memory is a session's page table: pages ids, changed `dirty` at a time per step.
type memory struct {
	pages []tier.BlockID
	r     *rand.Rand
}

func newMemory(b *testing.B, s *Store, pages int) *memory {
	m := &memory{pages: make([]tier.BlockID, pages), r: rand.New(rand.NewPCG(1, 2))}
	tx := s.Begin()
	for i := range m.pages {
		id, err := tx.Put(pageLike(m.r))
		if err != nil {
			b.Fatal(err)
		}
		m.pages[i] = id
	}
	tx.Commit("ses_base", Record{Step: api.Step{N: 0}}, &tier.Snapshot{Blocks: m.pages})
	return m
}

// step changes dirty pages and commits the session's step n, as a tier snapshotting between cells
// does (it Puts only the pages it found dirty).
func (m *memory) step(b *testing.B, s *Store, session string, n, dirty int) {
	tx := s.Begin()
	for range dirty {
		id, err := tx.Put(pageLike(m.r))
		if err != nil {
			b.Fatal(err)
		}
		m.pages[m.r.IntN(len(m.pages))] = id
	}
	snap := &tier.Snapshot{Tier: api.TierNano, State: make([]byte, 1024), Blocks: append([]tier.BlockID(nil), m.pages...)}
	if err := tx.Commit(session, Record{Step: api.Step{N: n}}, snap); err != nil {
		b.Fatal(err)
	}
	s.Retain(session, n)
}

// BenchmarkStepCommit is the store's part of a small nano cell's snapshot at 16 MiB (4096 pages,
// 150 dirty): what the session's next call may wait for. Compression runs in the writer.
func BenchmarkStepCommit(b *testing.B) {
	s, err := Open(Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	m := newMemory(b, s, 4096)
	b.ResetTimer()
	for n := range b.N {
		m.step(b, s, "ses_bench", n+1, 150)
	}
	b.StopTimer()
	s.Flush()
	u := s.Usage()
	b.ReportMetric(float64(u.DiskBytes)/float64(b.N+1)/1024, "KiB-disk/step")
}

// BenchmarkGrowth200Steps runs a 200-step session (4096 pages, 150 dirty a step) with the default
// retention and reports what the store holds at the end.
func BenchmarkGrowth200Steps(b *testing.B) {
	for range b.N {
		s, err := Open(Config{Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		m := newMemory(b, s, 4096)
		for n := 1; n <= 200; n++ {
			m.step(b, s, "ses_bench", n, 150)
		}
		s.EndSession("ses_base", false)
		s.Flush()
		u := s.Usage()
		b.ReportMetric(float64(u.RawBytes)/(1<<20), "MiB-raw-live")
		b.ReportMetric(float64(u.DiskBytes)/(1<<20), "MiB-disk")
		b.ReportMetric(float64(u.Blocks), "blocks")
		s.Close()
	}
}

// BenchmarkGetPage reads a written page back (decompress + hash check), as a restore does.
func BenchmarkGetPage(b *testing.B) {
	s, err := Open(Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	m := newMemory(b, s, 1024)
	s.Flush()
	b.ResetTimer()
	var buf []byte
	for i := range b.N {
		if buf, err = s.Get(buf[:0], m.pages[i%len(m.pages)]); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(4096)
}
