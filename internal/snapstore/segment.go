package snapstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/entersandbox/agentbox/internal/tier"
)

// A record is a header then the block's bytes: id (8), hash (32), raw length (4), stored length (4),
// flags (1), CRC-32 of the preceding header bytes (4). The CRC lets a scan at start-up stop at a torn
// tail; the block's own check is its hash.
const (
	headerSize = 8 + 32 + 4 + 4 + 1 + 4
	flagZstd   = 1
)

// segment is one packed file of records. The writer appends to the newest; reads use ReadAt.
type segment struct {
	no   uint32
	f    *os.File
	size int64 // guarded by Store.mu (written by the writer under it)
	live int   // blocks in it still alive; guarded by Store.mu
	dead int64 // bytes of freed records; guarded by Store.mu
	// rw keeps f open while it is read: closing takes it exclusively and sets gone.
	rw   sync.RWMutex
	gone bool // guarded by rw
}

// errSegmentGone is a read of a segment removed meanwhile (compacted): its blocks moved.
var errSegmentGone = errors.New("segment was removed")

func (sg *segment) read(off int64, n int) ([]byte, error) {
	sg.rw.RLock()
	defer sg.rw.RUnlock()
	if sg.gone {
		return nil, errSegmentGone
	}
	buf := make([]byte, n)
	if _, err := sg.f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("reading segment %d: %w", sg.no, err)
	}
	return buf, nil
}

// close closes the file once no read uses it.
func (sg *segment) close() error {
	sg.rw.Lock()
	defer sg.rw.Unlock()
	if sg.gone {
		return nil
	}
	sg.gone = true
	return sg.f.Close()
}

func (s *Store) segPath(no uint32) string {
	return filepath.Join(s.dir, "segments", fmt.Sprintf("seg-%06d", no))
}

// writer compresses queued blocks and appends them to the current segment, off the Put path.
func (s *Store) writer() {
	defer close(s.done)
	var cur *segment
	for range s.wake {
		for {
			s.mu.Lock()
			batch := s.queue
			s.queue = nil
			closed := s.closed
			s.mu.Unlock()
			if len(batch) == 0 {
				if closed {
					if cur != nil {
						cur.f.Sync()
					}
					return
				}
				break
			}
			cur = s.writeBatch(cur, batch)
		}
		cur = s.compact(cur)
	}
}

// writeBatch writes the blocks of batch still alive and settles the manifests waiting on them.
func (s *Store) writeBatch(cur *segment, batch []tier.BlockID) *segment {
	var rec []byte
	for _, id := range batch {
		s.mu.Lock()
		b := s.blocks[id]
		var raw []byte
		if b != nil {
			raw = b.raw
		}
		s.mu.Unlock()
		if raw == nil {
			continue // freed before it was written
		}
		comp := s.enc.EncodeAll(raw, nil)
		flag := byte(flagZstd)
		if len(comp) >= len(raw) {
			comp, flag = raw, 0
		}
		rec = binary.LittleEndian.AppendUint64(rec[:0], uint64(id))
		rec = append(rec, b.sum[:]...)
		rec = binary.LittleEndian.AppendUint32(rec, uint32(len(raw)))
		rec = binary.LittleEndian.AppendUint32(rec, uint32(len(comp)))
		rec = append(rec, flag)
		rec = binary.LittleEndian.AppendUint32(rec, crc32.ChecksumIEEE(rec))
		rec = append(rec, comp...)
		var err error
		if cur == nil || cur.size+int64(len(rec)) > s.seg {
			cur, err = s.newSegment()
		}
		var off int64
		if err == nil {
			if s.writeHook != nil {
				err = s.writeHook(rec)
			}
			if err == nil {
				off = cur.size
				_, err = cur.f.WriteAt(rec, off)
			}
		}
		s.mu.Lock()
		if err != nil {
			s.log.Warn("snapshot block write failed", "err", err)
			s.blockFailedLocked(id, b, err)
			if cur != nil {
				// The record may be half written; later records go after the space it took.
				cur.size += int64(len(rec))
			}
			s.mu.Unlock()
			continue
		}
		cur.size += int64(len(rec))
		b.seg, b.off, b.clen, b.flag, b.written, b.raw = cur.no, off, uint32(len(comp)), flag, true, nil
		if s.blocks[id] == b {
			cur.live++
		} else { // freed while it was written
			cur.dead += int64(len(rec))
		}
		waiters := b.waiters
		b.waiters = nil
		for _, m := range waiters {
			if m.waiting--; m.waiting == 0 {
				s.finishLocked(m)
			}
		}
		s.mu.Unlock()
	}
	return cur
}

// blockFailedLocked forgets a block that could not be written; the manifests waiting on it become
// missing (the next Put of the same data tries again).
func (s *Store) blockFailedLocked(id tier.BlockID, b *block, err error) {
	waiters := b.waiters
	b.waiters = nil
	for _, m := range waiters {
		s.failLocked(m, fmt.Sprintf("writing the snapshot failed: %v", err))
	}
	if s.index[b.sum] == id {
		delete(s.index, b.sum)
	}
	if s.blocks[id] == b {
		delete(s.blocks, id)
		s.total -= int64(b.rlen)
	}
	b.raw = nil
}

func (s *Store) newSegment() (*segment, error) {
	s.mu.Lock()
	no := uint32(1)
	for n := range s.segs {
		no = max(no, n+1)
	}
	s.mu.Unlock()
	f, err := os.OpenFile(s.segPath(no), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("snapstore: new segment: %w", err)
	}
	sg := &segment{no: no, f: f}
	s.mu.Lock()
	s.segs[no] = sg
	s.mu.Unlock()
	return sg, nil
}

// sweepSegmentsLocked removes segment files with no live block, except the newest (the writer's).
func (s *Store) sweepSegmentsLocked() int {
	newest := uint32(0)
	for n := range s.segs {
		newest = max(newest, n)
	}
	removed := 0
	for n, sg := range s.segs {
		if sg.live == 0 && n != newest {
			sg.close()
			os.Remove(s.segPath(n))
			delete(s.segs, n)
			removed++
		}
	}
	return removed
}

// scanSegments rebuilds the block index from the segment files (at Open, before the writer runs).
// A record whose header fails its CRC ends its segment's scan: what follows is a torn write.
func (s *Store) scanSegments() error {
	dir := filepath.Join(s.dir, "segments")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("snapstore: %w", err)
	}
	var nos []uint32
	for _, e := range ents {
		n, err := strconv.ParseUint(strings.TrimPrefix(e.Name(), "seg-"), 10, 32)
		if err != nil || !strings.HasPrefix(e.Name(), "seg-") {
			continue
		}
		nos = append(nos, uint32(n))
	}
	sort.Slice(nos, func(i, j int) bool { return nos[i] < nos[j] })
	for _, no := range nos {
		f, err := os.OpenFile(s.segPath(no), os.O_RDWR, 0o600)
		if err != nil {
			return fmt.Errorf("snapstore: %w", err)
		}
		sg := &segment{no: no, f: f}
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("snapstore: %w", err)
		}
		var hdr [headerSize]byte
		for off := int64(0); off+headerSize <= st.Size(); {
			if _, err := f.ReadAt(hdr[:], off); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("snapstore: %w", err)
			}
			if crc32.ChecksumIEEE(hdr[:headerSize-4]) != binary.LittleEndian.Uint32(hdr[headerSize-4:]) {
				s.log.Warn("snapshot segment ends in a torn record", "segment", no, "offset", off)
				break
			}
			id := tier.BlockID(binary.LittleEndian.Uint64(hdr[0:]))
			b := &block{rlen: binary.LittleEndian.Uint32(hdr[40:]), clen: binary.LittleEndian.Uint32(hdr[44:]), flag: hdr[48],
				seg: no, off: off, written: true}
			copy(b.sum[:], hdr[8:40])
			next := off + headerSize + int64(b.clen)
			if next > st.Size() {
				break
			}
			if _, dup := s.blocks[id]; !dup {
				s.blocks[id], s.index[b.sum] = b, id
				s.total += int64(b.rlen)
				sg.live++
			}
			s.next = max(s.next, id)
			off = next
		}
		sg.size = st.Size()
		s.segs[no] = sg
	}
	return nil
}

// compact rewrites the live records of segments that are mostly dead (freed blocks) into the
// current one, so that their files can go: disk use follows what retention keeps. It runs in the
// writer, the only appender, when the queue is empty; a Get racing a move reads the block again.
func (s *Store) compact(cur *segment) *segment {
	s.mu.Lock()
	var victims []*segment
	for n, sg := range s.segs {
		if (cur == nil || n != cur.no) && sg.live > 0 && sg.dead*2 > sg.size {
			victims = append(victims, sg)
		}
	}
	s.mu.Unlock()
	for _, sg := range victims {
		s.mu.Lock()
		var ids []tier.BlockID
		for id, b := range s.blocks {
			if b.written && b.seg == sg.no {
				ids = append(ids, id)
			}
		}
		s.mu.Unlock()
		for _, id := range ids {
			s.mu.Lock()
			b := s.blocks[id]
			if b == nil || b.seg != sg.no {
				s.mu.Unlock()
				continue
			}
			off, n := b.off, headerSize+int64(b.clen)
			s.mu.Unlock()
			rec, err := sg.read(off, int(n))
			if err == nil && (cur == nil || cur.size+n > s.seg) {
				cur, err = s.newSegment()
			}
			if err == nil {
				_, err = cur.f.WriteAt(rec, cur.size)
			}
			if err != nil {
				s.log.Warn("snapshot segment compaction stopped", "segment", sg.no, "err", err)
				return cur
			}
			s.mu.Lock()
			at := cur.size
			cur.size += n
			if s.blocks[id] == b && b.seg == sg.no {
				b.seg, b.off = cur.no, at
				cur.live++
				sg.live--
				sg.dead += n
			} else {
				cur.dead += n
			}
			s.mu.Unlock()
		}
		s.mu.Lock()
		s.sweepSegmentsLocked()
		s.mu.Unlock()
	}
	return cur
}
