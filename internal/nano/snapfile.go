package nano

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/entersandbox/agentbox/internal/pywasm"
)

// A saved snapshot is the initialised guest memory and its stack pointer, in a file named after
// everything that shaped it: the interpreter build, the runner and the memory reserve. Another build
// never reads it; a file that does not parse is made again.

const snapMagic = "agentbox-nano-snapshot-1\n"

func (e *Engine) snapshotKey() string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00", pywasm.BuildKey(), e.reserve)
	h.Write(runnerSource)
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// savedSnapshot loads the snapshot saved in dir when it is younger than maxAge, and otherwise makes
// one and saves it there. Failing to save only costs the next engine the time to make its own.
func (e *Engine) savedSnapshot(ctx context.Context, dir string, maxAge time.Duration) (*snapshot, error) {
	path := filepath.Join(dir, e.snapshotKey()+".snap")
	if fi, err := os.Stat(path); err == nil && time.Since(fi.ModTime()) < maxAge {
		s, err := readSnapshot(path)
		if err == nil {
			s.created = fi.ModTime()
			e.stats.Snapshots.Add(1)
			e.log.Debug("nano snapshot loaded", "path", path)
			return s, nil
		}
		e.log.Warn("saved nano snapshot unusable; making a new one", "path", path, "err", err)
	}
	s, err := e.makeSnapshot(ctx)
	if err != nil {
		return nil, err
	}
	if err := writeSnapshot(dir, path, s); err != nil {
		e.log.Warn("saving the nano snapshot", "path", path, "err", err)
	}
	return s, nil
}

func readSnapshot(path string) (*snapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	head := len(snapMagic) + 8
	if len(b) < head || string(b[:len(snapMagic)]) != snapMagic {
		return nil, errors.New("not a snapshot file")
	}
	sp := binary.LittleEndian.Uint32(b[len(snapMagic):])
	size := binary.LittleEndian.Uint32(b[len(snapMagic)+4:])
	data := b[head:]
	if uint32(len(data)) != size || size%wasmPage != 0 || sp > size {
		return nil, fmt.Errorf("snapshot file is damaged (%d bytes of memory, %d expected)", len(data), size)
	}
	img, err := newSharedImage(data)
	if err != nil {
		return nil, err
	}
	return &snapshot{mem: img, sp: sp}, nil
}

// writeSnapshot writes s atomically: a reader sees the old file or the whole new one.
func writeSnapshot(dir, path string, s *snapshot) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".snap-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	var head [8]byte
	binary.LittleEndian.PutUint32(head[:], s.sp)
	binary.LittleEndian.PutUint32(head[4:], uint32(len(s.mem.data)))
	_, err = f.WriteString(snapMagic)
	if err == nil {
		_, err = f.Write(head[:])
	}
	if err == nil {
		_, err = f.Write(s.mem.data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
