package nano

import (
	"bytes"
	"errors"
	"fmt"
)

// dataSegment is an active data segment of the original module: bytes copied to Offset at
// instantiation.
type dataSegment struct {
	Offset uint32
	Data   []byte
}

const (
	sectionData = 11
	opI32Const  = 0x41
	opEnd       = 0x0b
)

// stripDataSegments returns a copy of a WebAssembly binary whose data segments are all passive and
// empty, and the active segments it took out.
//
// wazero applies active data segments at every instantiation, which would overwrite the snapshot's
// memory; with them gone, an instance starts from exactly the memory we hand it. The segment count is
// kept, so a DataCount section stays consistent.
func stripDataSegments(bin []byte) ([]byte, []dataSegment, error) {
	if len(bin) < 8 || !bytes.Equal(bin[:4], []byte("\x00asm")) {
		return nil, nil, errors.New("not a WebAssembly binary")
	}
	out := bytes.NewBuffer(make([]byte, 0, len(bin)))
	out.Write(bin[:8])
	var segs []dataSegment
	found := false
	r := &reader{b: bin, pos: 8}
	for r.pos < len(r.b) {
		start := r.pos
		id := r.byte()
		size := r.u32()
		if r.err != nil || r.pos+int(size) > len(r.b) {
			return nil, nil, fmt.Errorf("section at byte %d: truncated", start)
		}
		body := r.b[r.pos : r.pos+int(size)]
		r.pos += int(size)
		if id != sectionData {
			out.Write(r.b[start:r.pos])
			continue
		}
		found = true
		parsed, err := parseDataSection(body)
		if err != nil {
			return nil, nil, fmt.Errorf("data section: %w", err)
		}
		segs = parsed.active
		var sec bytes.Buffer
		writeU32(&sec, parsed.count)
		for i := uint32(0); i < parsed.count; i++ {
			sec.Write([]byte{0x01, 0x00}) // passive, zero bytes
		}
		out.WriteByte(sectionData)
		writeU32(out, uint32(sec.Len()))
		out.Write(sec.Bytes())
	}
	if r.err != nil {
		return nil, nil, r.err
	}
	if !found {
		return nil, nil, errors.New("module has no data section")
	}
	return out.Bytes(), segs, nil
}

type dataSection struct {
	count  uint32
	active []dataSegment
}

func parseDataSection(body []byte) (dataSection, error) {
	r := &reader{b: body}
	var ds dataSection
	ds.count = r.u32()
	for i := uint32(0); i < ds.count && r.err == nil; i++ {
		flag := r.u32()
		switch flag {
		case 0, 2:
			if flag == 2 {
				if mem := r.u32(); mem != 0 {
					return ds, fmt.Errorf("segment %d: memory %d, want 0", i, mem)
				}
			}
			if op := r.byte(); op != opI32Const {
				return ds, fmt.Errorf("segment %d: offset is not an i32.const (opcode %#x)", i, op)
			}
			off := r.s32()
			if op := r.byte(); op != opEnd {
				return ds, fmt.Errorf("segment %d: offset expression longer than one instruction", i)
			}
			n := r.u32()
			data := r.bytes(int(n))
			ds.active = append(ds.active, dataSegment{Offset: uint32(off), Data: data})
		case 1:
			r.bytes(int(r.u32()))
		default:
			return ds, fmt.Errorf("segment %d: unknown flag %d", i, flag)
		}
	}
	return ds, r.err
}

type reader struct {
	b   []byte
	pos int
	err error
}

var errTruncated = errors.New("truncated binary")

func (r *reader) byte() byte {
	if r.err != nil || r.pos >= len(r.b) {
		r.err = errTruncated
		return 0
	}
	c := r.b[r.pos]
	r.pos++
	return c
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || n < 0 || r.pos+n > len(r.b) {
		r.err = errTruncated
		return nil
	}
	s := r.b[r.pos : r.pos+n]
	r.pos += n
	return s
}

func (r *reader) u32() uint32 {
	var v uint32
	for shift := 0; shift < 35; shift += 7 {
		c := r.byte()
		v |= uint32(c&0x7f) << shift
		if c&0x80 == 0 {
			return v
		}
	}
	r.err = errors.New("LEB128 too long")
	return 0
}

func (r *reader) s32() int32 {
	var v int64
	shift := 0
	for {
		c := r.byte()
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return int32(v)
		}
		if shift >= 35 {
			r.err = errors.New("LEB128 too long")
			return 0
		}
	}
}

func writeU32(w *bytes.Buffer, v uint32) {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			w.WriteByte(c | 0x80)
			continue
		}
		w.WriteByte(c)
		return
	}
}
