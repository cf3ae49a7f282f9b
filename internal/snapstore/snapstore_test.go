package snapstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

func open(t *testing.T, dir string, ret Retention) *Store {
	t.Helper()
	s, err := Open(Config{Dir: dir, Retention: ret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func page(seed byte) []byte {
	b := bytes.Repeat([]byte{seed}, 4096)
	b[0], b[4095] = seed^0x5a, byte(len(b))
	return b
}

// save puts pages as one step's snapshot and commits it.
func save(t *testing.T, s *Store, session string, n int, pages ...[]byte) *tier.Snapshot {
	t.Helper()
	tx := s.Begin()
	snap := &tier.Snapshot{Tier: api.TierNano, State: []byte(fmt.Sprintf("state %d", n))}
	for _, p := range pages {
		id, err := tx.Put(p)
		if err != nil {
			t.Fatal(err)
		}
		snap.Blocks = append(snap.Blocks, id)
	}
	if err := tx.Commit(session, Record{Owner: "t", Step: api.Step{N: n}}, snap); err != nil {
		t.Fatal(err)
	}
	return snap
}

func TestPutGetDedupAndVerify(t *testing.T) {
	s := open(t, t.TempDir(), Retention{})
	a, err := s.Put(page(1))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Put(page(1))
	c, _ := s.Put(page(2))
	if a != b || a == c || a == 0 {
		t.Fatalf("ids %d %d %d: equal data must share an id, other data not", a, b, c)
	}
	for _, flushed := range []bool{false, true} {
		t.Run(fmt.Sprintf("flushed=%v", flushed), func(t *testing.T) {
			if flushed {
				s.Flush()
			}
			got, err := s.Get([]byte("pre"), c)
			if err != nil || !bytes.Equal(got, append([]byte("pre"), page(2)...)) {
				t.Fatalf("Get = %d bytes, %v", len(got), err)
			}
		})
	}
	if _, err := s.Get(nil, 999); !errors.Is(err, tier.ErrCorrupt) {
		t.Fatalf("unknown block: %v, want ErrCorrupt", err)
	}
	if _, err := s.Put(make([]byte, tier.MaxBlock+1)); errdefs.ClassOf(err) != errdefs.InvalidArgument {
		t.Fatalf("oversized block: %v", err)
	}
}

func TestKeyedHashDiffersPerInstallation(t *testing.T) {
	s1, s2 := open(t, t.TempDir(), Retention{}), open(t, t.TempDir(), Retention{})
	if s1.sum(page(3)) == s2.sum(page(3)) {
		t.Fatal("two installations hash a block alike: the key is not used")
	}
	st, err := os.Stat(filepath.Join(s1.dir, "key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v, want 0600", st.Mode(), err)
	}
}

func TestCorruptSegmentByteIsDetected(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Retention{})
	save(t, s, "ses_a", 1, page(7))
	snap2 := save(t, s, "ses_a", 2, page(8))
	s.Flush()
	// Flip a byte inside step 1's block (the first record's payload).
	f, err := os.OpenFile(s.segPath(1), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var bb [1]byte
	f.ReadAt(bb[:], headerSize+3)
	bb[0] ^= 0xff
	f.WriteAt(bb[:], headerSize+3)
	f.Close()
	snap1, _, err := s.Load("ses_a", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(nil, snap1.Blocks[0]); !errors.Is(err, tier.ErrCorrupt) {
		t.Fatalf("corrupt block read: %v, want ErrCorrupt", err)
	}
	s.MarkCorrupt("ses_a", 1, "block failed its hash check")
	if st, _ := s.State("ses_a", 1); st.State != api.SnapshotCorrupt {
		t.Fatalf("step 1 state %q", st.State)
	}
	if _, _, err := s.Load("ses_a", 1); errdefs.ClassOf(err) != errdefs.Conflict {
		t.Fatalf("loading a corrupt step: %v", err)
	}
	if got, err := s.Get(nil, snap2.Blocks[0]); err != nil || !bytes.Equal(got, page(8)) {
		t.Fatalf("the other step broke: %v", err)
	}
}

func TestWriteFailureMarksStepMissing(t *testing.T) {
	s := open(t, t.TempDir(), Retention{})
	s.writeHook = func([]byte) error { return fmt.Errorf("write: %w", syscall.ENOSPC) }
	save(t, s, "ses_a", 1, page(9))
	s.Flush()
	st, _ := s.State("ses_a", 1)
	if st.State != api.SnapshotMissing || st.Reason == "" {
		t.Fatalf("state %+v, want missing with a reason", st)
	}
	s.writeHook = nil
	save(t, s, "ses_a", 2, page(9)) // the same data stores once the disk has room
	s.Flush()
	if st, _ := s.State("ses_a", 2); st.State != api.SnapshotStored {
		t.Fatalf("after the disk has room: %+v", st)
	}
}

func TestRestartKeepsPinnedSessionsOnly(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Retention{})
	save(t, s, "ses_keep", 0, page(1))
	save(t, s, "ses_keep", 1, page(2), page(3))
	save(t, s, "ses_drop", 0, page(4))
	s.Flush()
	if err := s.Pin("ses_keep", 1, true); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2 := open(t, dir, Retention{})
	arch := s2.Archived()
	if len(arch) != 1 || arch[0].Session != "ses_keep" || len(arch[0].Steps) != 1 || arch[0].Steps[0].Step.N != 1 {
		t.Fatalf("archived %+v, want ses_keep step 1", arch)
	}
	snap, _, err := s2.Load("ses_keep", 1)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]byte{page(2), page(3)} {
		if got, err := s2.Get(nil, snap.Blocks[i]); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("block %d after restart: %v", i, err)
		}
	}
	if _, ok := s2.State("ses_drop", 0); ok {
		t.Fatal("an unpinned session survived the restart")
	}
	if u := s2.Usage(); u.Blocks != 2 {
		t.Fatalf("%d blocks after the sweep, want 2", u.Blocks)
	}
	// A fork of the archived step shares its blocks.
	if err := s2.Copy("ses_keep", 1, "ses_fork", Record{Step: api.Step{N: 0}}); err != nil {
		t.Fatal(err)
	}
}

func TestRetentionThinsOldStepsKeepsPinnedAndCurrent(t *testing.T) {
	s := open(t, t.TempDir(), Retention{Dense: 5, Every: 10, SessionBytes: -1, TotalBytes: -1})
	for n := 0; n <= 30; n++ {
		save(t, s, "ses_a", n, page(byte(n)))
		if n == 3 {
			s.Pin("ses_a", 3, true)
		}
		s.Retain("ses_a", 7)
	}
	s.Flush()
	for n := 0; n <= 30; n++ {
		st, _ := s.State("ses_a", n)
		want := api.SnapshotThinned
		if n >= 26 || n%10 == 0 || n == 3 || n == 7 {
			want = api.SnapshotStored
		}
		if st.State != want {
			t.Errorf("step %d: %s, want %s", n, st.State, want)
		}
	}
}

func TestBudgetsThinOldestUnpinned(t *testing.T) {
	tests := []struct {
		name string
		ret  Retention
	}{
		{"session budget", Retention{Dense: 100, SessionBytes: 3 * 4096, TotalBytes: -1}},
		{"server budget", Retention{Dense: 100, SessionBytes: -1, TotalBytes: 3 * 4096}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir(), tc.ret)
			for n := 0; n < 6; n++ {
				save(t, s, "ses_a", n, page(byte(n)))
				s.Retain("ses_a", n)
			}
			s.Flush()
			if got := s.SessionBytes("ses_a"); got > 3*4096 {
				t.Fatalf("session holds %d bytes, over its budget", got)
			}
			for n, want := range []string{api.SnapshotThinned, api.SnapshotThinned, api.SnapshotThinned, api.SnapshotStored, api.SnapshotStored, api.SnapshotStored} {
				if st, _ := s.State("ses_a", n); st.State != want {
					t.Errorf("step %d: %s, want %s", n, st.State, want)
				}
			}
		})
	}
}

func TestGCFreesBlocksAndSegments(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), SegmentBytes: 8 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for n := 0; n < 8; n++ {
		save(t, s, "ses_a", n, page(byte(n)), page(200)) // page(200) is shared by every step
	}
	s.Flush()
	if u := s.Usage(); u.Blocks != 9 {
		t.Fatalf("%d blocks, want 9 (8 own + 1 shared)", u.Blocks)
	}
	s.EndSession("ses_a", false)
	s.Sweep()
	if u := s.Usage(); u.Blocks != 0 || u.Segments > 1 {
		t.Fatalf("after closing: %+v, want no blocks and at most the writer's segment", u)
	}
	// Orphans: a transaction that aborts frees what it put; a bare Put is swept.
	tx := s.Begin()
	tx.Put(page(50))
	tx.Abort()
	s.Put(page(51))
	s.Sweep()
	if u := s.Usage(); u.Blocks != 0 {
		t.Fatalf("orphans left: %+v", u)
	}
}

func TestHoldKeepsNamedBlocksAcrossRetention(t *testing.T) {
	s := open(t, t.TempDir(), Retention{Dense: 1, Every: -1, SessionBytes: -1, TotalBytes: -1})
	first := save(t, s, "ses_a", 1, page(1), page(2))
	// The next snapshot names step 1's blocks without putting them again, holding them first.
	tx := s.Begin()
	if !tx.Hold(first.Blocks) {
		t.Fatal("Hold: step 1's blocks are stored")
	}
	s.EndSession("ses_a", false) // step 1 goes: its blocks stay, held by the transaction
	if err := tx.Commit("ses_a", Record{Step: api.Step{N: 2}}, &tier.Snapshot{Blocks: first.Blocks}); err != nil {
		t.Fatal(err)
	}
	s.Flush()
	if got, err := s.Get(nil, first.Blocks[1]); err != nil || !bytes.Equal(got, page(2)) {
		t.Fatalf("a held block was freed: %v", err)
	}
	s.EndSession("ses_a", false)
	s.Sweep()
	tx = s.Begin()
	if tx.Hold(first.Blocks) {
		t.Fatal("Hold reported freed blocks as stored")
	}
	tx.Abort()
}

func TestCompactionReclaimsThinnedSteps(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir(), SegmentBytes: 64 << 10, Retention: Retention{Dense: 2, Every: -1, SessionBytes: -1, TotalBytes: -1}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var sticky [][]byte
	var last *tier.Snapshot
	for n := 1; n <= 60; n++ {
		// Each step has three pages of its own, which die when it is thinned, and one that every
		// later step keeps: every segment keeps a live quarter, so none empties by itself and only
		// compaction gives the thinned steps' space back.
		sticky = append(sticky, randPage(10000+n))
		pages := append([][]byte{randPage(3 * n), randPage(3*n + 1), randPage(3*n + 2)}, sticky...)
		last = save(t, s, "ses_a", n, pages...)
		s.Retain("ses_a", n)
		s.Flush()
	}
	// The 66 live records fit in 5 segments; segments less than half dead are left as they are.
	// Without compaction all 16 segments stay (996 KB).
	const want = 10 * 64 << 10
	for range 200 { // the writer compacts when idle
		if s.Usage().DiskBytes < want {
			break
		}
		s.wake <- struct{}{}
		sleepBriefly()
	}
	if u := s.Usage(); u.DiskBytes >= want || u.Blocks != 66 {
		t.Fatalf("after thinning 58 of 60 steps: %+v, want under %d bytes and 66 blocks", u, want)
	}
	for i, id := range last.Blocks {
		if _, err := s.Get(nil, id); err != nil {
			t.Fatalf("block %d of the last step after compaction: %v", i, err)
		}
	}
}

// randPage is 4 KiB that does not compress, different for each seed.
func randPage(seed int) []byte {
	p := make([]byte, 4096)
	x := uint64(seed)*0x9e3779b97f4a7c15 + 1
	for i := range p {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x)
	}
	return p
}

func TestSessionBlocksRoutesPutsToTheCurrentTransaction(t *testing.T) {
	s := open(t, t.TempDir(), Retention{})
	v := s.SessionBlocks()
	if v.Store() != tier.Blocks(s) {
		t.Fatal("Store is not the store")
	}
	tx := v.Begin()
	id, err := v.Put(page(1))
	if err != nil {
		t.Fatal(err)
	}
	s.Sweep() // held by the transaction: not an orphan
	if _, err := s.Get(nil, id); err != nil {
		t.Fatalf("a block put through the current transaction was swept: %v", err)
	}
	if err := tx.Commit("ses_a", Record{Step: api.Step{N: 1}}, &tier.Snapshot{Blocks: []tier.BlockID{id}}); err != nil {
		t.Fatal(err)
	}
	if !v.Hold([]tier.BlockID{id}) {
		t.Fatal("Hold outside a transaction: the block is stored")
	}
	s.EndSession("ses_a", false)
	if v.Hold([]tier.BlockID{id}) {
		t.Fatal("Hold reported a freed block as stored")
	}
	// A snapshot naming the freed id fails its Commit with ErrCorrupt (dispatch then starts anew).
	tx = v.Begin()
	if err := tx.Commit("ses_a", Record{Step: api.Step{N: 2}}, &tier.Snapshot{Blocks: []tier.BlockID{id}}); !errors.Is(err, tier.ErrCorrupt) {
		t.Fatalf("commit naming a freed block: %v", err)
	}
}

func TestOneStorePerDirectory(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Retention{})
	if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a second Open of an open store: %v", err)
	}
	s.Close()
	s2, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	s2.Close()
}
