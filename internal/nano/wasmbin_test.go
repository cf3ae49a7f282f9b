package nano

import (
	"bytes"
	"testing"

	"github.com/entersandbox/agentbox/internal/pywasm"
)

// module builds a minimal binary: a memory section and the given data section body.
func module(data []byte) []byte {
	var b bytes.Buffer
	b.Write([]byte("\x00asm\x01\x00\x00\x00"))
	b.Write([]byte{5, 3, 1, 0, 1}) // memory section: one memory, min 1 page
	b.WriteByte(sectionData)
	writeU32(&b, uint32(len(data)))
	b.Write(data)
	return b.Bytes()
}

func TestStripDataSegments(t *testing.T) {
	// Two active segments (one with a multi-byte offset) and one passive.
	data := []byte{3,
		0, opI32Const, 0x10, opEnd, 2, 'h', 'i',
		0, opI32Const, 0x80, 0x02, opEnd, 1, 'x',
		1, 2, 'p', 'q'}
	out, segs, err := stripDataSegments(module(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) != 2 || segs[0].Offset != 0x10 || string(segs[0].Data) != "hi" || segs[1].Offset != 256 || string(segs[1].Data) != "x" {
		t.Fatalf("segments %+v", segs)
	}
	want := module([]byte{3, 1, 0, 1, 0, 1, 0})
	if !bytes.Equal(out, want) {
		t.Fatalf("rewritten binary\n got %x\nwant %x", out, want)
	}
}

func TestStripDataSegmentsErrors(t *testing.T) {
	cases := map[string][]byte{
		"not wasm":        []byte("\x7fELF...."),
		"no data section": []byte("\x00asm\x01\x00\x00\x00"),
		"truncated":       module([]byte{1, 0, opI32Const}),
		"global offset":   module([]byte{1, 0, 0x23, 0, opEnd, 0}),
		"unknown flag":    module([]byte{1, 7}),
		"section too big": append([]byte("\x00asm\x01\x00\x00\x00"), sectionData, 0x7f, 0),
	}
	for name, bin := range cases {
		t.Run(name, func(t *testing.T) {
			if _, _, err := stripDataSegments(bin); err == nil {
				t.Fatal("no error")
			}
		})

	}
}

func TestStripRealModule(t *testing.T) {
	out, segs, err := stripDataSegments(pywasm.Wasm())
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, s := range segs {
		total += len(s.Data)
	}
	if len(segs) == 0 || total < 1<<20 || len(out) >= len(pywasm.Wasm())-total+1024 {
		t.Fatalf("%d segments, %d bytes; binary %d -> %d", len(segs), total, len(pywasm.Wasm()), len(out))
	}
}

func FuzzStripDataSegments(f *testing.F) {
	f.Add(module([]byte{1, 0, opI32Const, 0x10, opEnd, 2, 'h', 'i'}))
	f.Add(module([]byte{2, 1, 0, 2, 0, opI32Const, 0, opEnd, 0}))
	f.Add([]byte("\x00asm\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, bin []byte) {
		out, segs, err := stripDataSegments(bin)
		if err != nil {
			return
		}
		// A binary we accept rewrites to one we accept again, with no active segments left.
		again, segs2, err := stripDataSegments(out)
		if err != nil || len(segs2) != 0 || !bytes.Equal(again, out) {
			t.Fatalf("rewrite is not stable: %v, %d segments", err, len(segs2))
		}
		_ = segs
	})
}
