package nano

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/entersandbox/agentbox/internal/tier"
)

// nanoState is tier.Snapshot.State on the nano tier: everything a restore needs besides the blocks.
type nanoState struct {
	Key     string // Engine.stateKey of the engine that took it
	MemSize uint32 // bytes of linear memory
	SP      uint32 // __stack_pointer, the module's only mutable global
	// Pages is the block of every 4 KiB page of memory; zero is a page of zeros.
	Pages []tier.BlockID
	Cwd   string
	// FDs are the guest's descriptors above fd 3 that were open (runner.py's _open_fds).
	FDs   []int
	Files []fileRecord // parents before children
}

// fileRecord is one name of the writable tree.
type fileRecord struct {
	Path         string
	Mode         fs.FileMode
	Mtime, Atime int64
	Target       string // a symbolic link's
	LinkOf       string // an earlier record naming the same file (hard link)
	Size         int64
	Blocks       []tier.BlockID // a regular file's content, fileBlock bytes each
}

// The encoding: stateMagic, then zstd of a body of varints and length-prefixed strings. The page
// table is written as differences between neighbouring ids: a store that numbers blocks in the order
// they are first put (as internal/snapstore does) makes most of them small and repeated, so that a
// 16 MiB memory's table takes a few KiB rather than 32.
const stateMagic = "agentbox-nano-state-1\n"

// Bounds a decoded state must keep, so that a damaged one cannot ask for huge allocations.
const (
	maxStatePages = (maxMemoryMB << 20) / osPage
	maxStateFiles = 1 << 20
	maxStateBytes = 256 << 20 // decompressed
)

var (
	stateCodec = sync.OnceValues(func() (*zstd.Encoder, *zstd.Decoder) {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			panic(err) // only for invalid options
		}
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxStateBytes))
		if err != nil {
			panic(err)
		}
		return enc, dec
	})
	errStateCorrupt = fmt.Errorf("%w: the nano state does not decode", tier.ErrCorrupt)
)

func (s *nanoState) encode() []byte {
	b := make([]byte, 0, 64+len(s.Pages)*2+len(s.Files)*64)
	putString := func(v string) {
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	putString(s.Key)
	b = binary.AppendUvarint(b, uint64(s.MemSize))
	b = binary.AppendUvarint(b, uint64(s.SP))
	b = binary.AppendUvarint(b, uint64(len(s.Pages)))
	var prev tier.BlockID
	for _, id := range s.Pages {
		b = binary.AppendVarint(b, int64(id-prev))
		prev = id
	}
	putString(s.Cwd)
	b = binary.AppendUvarint(b, uint64(len(s.FDs)))
	for _, fd := range s.FDs {
		b = binary.AppendUvarint(b, uint64(fd))
	}
	b = binary.AppendUvarint(b, uint64(len(s.Files)))
	for _, f := range s.Files {
		putString(f.Path)
		b = binary.AppendUvarint(b, uint64(f.Mode))
		b = binary.AppendVarint(b, f.Mtime)
		b = binary.AppendVarint(b, f.Atime)
		putString(f.Target)
		putString(f.LinkOf)
		b = binary.AppendUvarint(b, uint64(f.Size))
		b = binary.AppendUvarint(b, uint64(len(f.Blocks)))
		for _, id := range f.Blocks {
			b = binary.AppendUvarint(b, uint64(id))
		}
	}
	enc, _ := stateCodec()
	return enc.EncodeAll(b, []byte(stateMagic))
}

// stateReader reads the body; the first error sticks.
type stateReader struct {
	b   []byte
	err error
}

func (r *stateReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errStateCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *stateReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errStateCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a length and checks it against max and what is left (each item takes a byte at least).
func (r *stateReader) count(max int) int {
	n := r.uvarint()
	if r.err == nil && (n > uint64(max) || n > uint64(len(r.b))) {
		r.err = errStateCorrupt
		return 0
	}
	return int(n)
}

func (r *stateReader) string() string {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.err = errStateCorrupt
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *stateReader) u32() uint32 {
	v := r.uvarint()
	if v > 1<<32-1 {
		r.err = errStateCorrupt
	}
	return uint32(v)
}

// decodeState parses a State; anything malformed is an error wrapping tier.ErrCorrupt.
func decodeState(b []byte) (*nanoState, error) {
	if len(b) < len(stateMagic) || string(b[:len(stateMagic)]) != stateMagic {
		return nil, fmt.Errorf("%w: not a nano tier state", tier.ErrCorrupt)
	}
	_, dec := stateCodec()
	body, err := dec.DecodeAll(b[len(stateMagic):], nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errStateCorrupt, err)
	}
	r := &stateReader{b: body}
	s := &nanoState{Key: r.string(), MemSize: r.u32(), SP: r.u32()}
	pages := r.count(maxStatePages)
	s.Pages = make([]tier.BlockID, pages)
	var prev tier.BlockID
	for i := range s.Pages {
		prev += tier.BlockID(r.varint())
		s.Pages[i] = prev
	}
	s.Cwd = r.string()
	s.FDs = make([]int, r.count(1<<16))
	for i := range s.FDs {
		s.FDs[i] = int(r.u32())
	}
	s.Files = make([]fileRecord, r.count(maxStateFiles))
	for i := range s.Files {
		f := &s.Files[i]
		f.Path = r.string()
		f.Mode = fs.FileMode(r.u32())
		f.Mtime, f.Atime = r.varint(), r.varint()
		f.Target, f.LinkOf = r.string(), r.string()
		f.Size = int64(r.uvarint())
		f.Blocks = make([]tier.BlockID, r.count(maxStateBytes/fileBlock+1))
		for j := range f.Blocks {
			f.Blocks[j] = tier.BlockID(r.uvarint())
		}
		if f.Size < 0 {
			r.err = errStateCorrupt
		}
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errStateCorrupt
	}
	if r.err != nil {
		return nil, r.err
	}
	return s, nil
}

// blockList is every block the state refers to, each once and in order (zero pages refer to none).
func (s *nanoState) blockList() []tier.BlockID {
	out := make([]tier.BlockID, 0, len(s.Pages)+len(s.Files))
	for _, id := range s.Pages {
		if id != 0 {
			out = append(out, id)
		}
	}
	for _, f := range s.Files {
		out = append(out, f.Blocks...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
