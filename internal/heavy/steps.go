package heavy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
)

// Time travel on the heavy tier (docs/time-travel-heavy.md). A step's snapshot is a `runsc checkpoint
// --leave-running` of the session's sandbox: its whole state (processes, memory, the tmpfs /tmp,
// /home/user, /data and /output, open files) in an image of a few files. gVisor writes a full image
// every time, so the image is cut into blocks of snapBlock bytes that the store deduplicates; State
// records which blocks make up which file, and the OCI spec the sandbox ran under. Restore writes the
// image back from the blocks and `runsc restore`s it into a new sandbox.

var (
	_ tier.Snapshotter = (*session)(nil)
	_ tier.Restorer    = (*Engine)(nil)
)

// snapBlock is the unit images are cut into: gVisor's page size, so that pages that did not change
// between steps are equal blocks.
const snapBlock = 4 << 10

// maxImageFile bounds an image file's size in a state read back: far above what a sandbox's memory
// limit and tmpfs caps allow, it only keeps a damaged state from asking for absurd allocations.
const maxImageFile = 64 << 30

// stateVersion is the version of stepState this code writes and reads.
const stateVersion = 1

// Bounds of the steps of a snapshot and a restore. The inspection runs the guest's own reprs, which
// the agent cuts off after 2 s; the rest is gVisor's, bounded so that a stuck runsc cannot hold the
// session.
const (
	inspectTimeout    = 15 * time.Second
	checkpointTimeout = 2 * time.Minute
	reseedTimeout     = 30 * time.Second
)

// stepState is Snapshot.State on the heavy tier.
type stepState struct {
	Version int `json:"version"`
	// Spec is the sandbox's OCI spec (its bundle's config.json) when it was checkpointed: a restore
	// runs under the same one but for what must differ (see specDrift).
	Spec json.RawMessage `json:"spec"`
	// Limits and Packages are the session's; Networked says whether it had a governed network (a
	// networked image restores only into a networked sandbox, and an offline one only offline).
	Limits    api.Limits `json:"limits"`
	Packages  []string   `json:"packages,omitempty"`
	Networked bool       `json:"networked"`
	// Runs is how many programs the sandbox had run: a restored one is never "fresh" (which would
	// start the interpreter's globals over).
	Runs int `json:"runs"`
	// Files is the checkpoint image, file by file.
	Files []imageFile `json:"files"`
}

// imageFile is one file of a checkpoint image: its name in the image directory, its size, and its
// blocks in order (snapBlock bytes each, the last one shorter), as a block table (see packIDs).
type imageFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Blocks []byte `json:"blocks"`
}

// packIDs appends ids to dst as a block table: runs of equal steps from one id to the next, each a
// pair of varints (the step, zigzag-encoded, from the id before the run, the first one from zero;
// and the run's length). Images repeat the previous step's blocks in order, which the store numbered
// in order, and zero pages are one block again and again: a 120 MiB image (30,000 blocks, 240 KB as
// plain ids) takes a few KB.
func packIDs(dst []byte, ids []tier.BlockID) []byte {
	var prev tier.BlockID
	for i := 0; i < len(ids); {
		step := int64(ids[i] - prev)
		n := 1
		for i+n < len(ids) && int64(ids[i+n]-ids[i+n-1]) == step {
			n++
		}
		dst = binary.AppendVarint(dst, step)
		dst = binary.AppendUvarint(dst, uint64(n))
		prev = ids[i+n-1]
		i += n
	}
	return dst
}

// blockIDs decodes the file's block table; one that does not hold exactly the file's number of
// blocks is corrupt.
func (f *imageFile) blockIDs() ([]tier.BlockID, error) {
	want := (f.Size + snapBlock - 1) / snapBlock
	if f.Size < 0 || f.Size > maxImageFile {
		return nil, fmt.Errorf("%w: image file %q of %d bytes", tier.ErrCorrupt, f.Name, f.Size)
	}
	ids := make([]tier.BlockID, 0, min(want, 1<<16))
	var prev tier.BlockID
	for b := f.Blocks; len(b) > 0; {
		step, k := binary.Varint(b)
		if k <= 0 {
			return nil, fmt.Errorf("%w: image file %q: unreadable block table", tier.ErrCorrupt, f.Name)
		}
		n, j := binary.Uvarint(b[k:])
		if j <= 0 || n == 0 || n > uint64(want)-uint64(len(ids)) {
			return nil, fmt.Errorf("%w: image file %q: a block table for more than its %d blocks", tier.ErrCorrupt, f.Name, want)
		}
		b = b[k+j:]
		for range n {
			prev += tier.BlockID(step)
			ids = append(ids, prev)
		}
	}
	if int64(len(ids)) != want {
		return nil, fmt.Errorf("%w: image file %q: %d blocks in the table for %d bytes", tier.ErrCorrupt, f.Name, len(ids), f.Size)
	}
	return ids, nil
}

// SnapshotStats describe the last snapshot a session took, for logs and benchmarks.
type SnapshotStats struct {
	Checkpoint time.Duration // runsc checkpoint: the time the sandbox was paused and saved
	Total      time.Duration // inspection, checkpoint and cutting into blocks
	ImageBytes int64         // the raw image
	Blocks     int           // blocks in the image (ImageBytes/4 KiB, rounded up per file)
}

// LastSnapshot reports the stats of the last Snapshot of a heavy session, and false for any other
// session or one not snapshotted yet.
func LastSnapshot(s tier.Session) (SnapshotStats, bool) {
	ss, ok := s.(*session)
	if !ok {
		return SnapshotStats{}, false
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.lastSnap, ss.lastSnap.Blocks > 0
}

// RestoreStats describe how a heavy session was restored, for logs and benchmarks.
type RestoreStats struct {
	Rebuild time.Duration // writing the image back from blocks
	Total   time.Duration // until the restored sandbox answered (rebuild, runsc restore, reseed)
}

// Restored reports how a heavy session was restored, and false for any other session or one that
// was not restored.
func Restored(s tier.Session) (RestoreStats, bool) {
	ss, ok := s.(*session)
	if !ok {
		return RestoreStats{}, false
	}
	return ss.restored, ss.restored.Total > 0
}

// inspection is the agent's answer to an inspect request with state.
type inspection struct {
	Variables []api.Variable `json:"variables"`
	Files     []fileEntry    `json:"files"`
	Cwd       string         `json:"cwd"`
}

// Snapshot saves the session's state: the agent's summary of the globals and writable files, then a
// checkpoint of the sandbox, which keeps running, cut into blocks. It holds the session's lock until
// the checkpoint is written, so the next cell waits for that (not for the cutting, which reads only
// the image). A failure, or ctx ending, leaves the session as it was, unless the sandbox broke the
// protocol or stopped answering (then the session ends, as after a cell). The inspection is not cut
// short by ctx (an agent call cut short costs the sandbox): it is bounded by inspectTimeout, and ctx
// is checked after it, stops runsc checkpoint and the cutting.
func (ss *session) Snapshot(ctx context.Context, blocks tier.Blocks) (*tier.Snapshot, error) {
	e := ss.e
	e.busy.Add(1) // Close lets a snapshot finish, like a call
	defer e.busy.Add(-1)
	start := time.Now()
	dir, snap, st, cpTime, err := ss.checkpoint(ctx)
	if dir != "" {
		defer os.RemoveAll(dir)
	}
	if err != nil {
		return nil, err
	}
	ids, raw, err := putImage(ctx, dir, blocks, st)
	if err != nil {
		return nil, fmt.Errorf("heavy snapshot: %w", err)
	}
	if snap.State, err = json.Marshal(st); err != nil {
		return nil, fmt.Errorf("heavy snapshot: %w", err)
	}
	snap.Blocks = ids
	stats := SnapshotStats{Checkpoint: cpTime, Total: time.Since(start), ImageBytes: raw, Blocks: int((raw + snapBlock - 1) / snapBlock)}
	ss.mu.Lock()
	ss.lastSnap = stats
	ss.mu.Unlock()
	e.log.Debug("heavy: step snapshot", "id", ss.s.id, "checkpoint", cpTime, "total", stats.Total, "image_bytes", raw, "unique_blocks", len(ids))
	return snap, nil
}

// checkpoint is Snapshot's part under the session's lock: the inspection and runsc checkpoint into a
// new scratch directory (returned whenever it was made: the caller removes it), and the state
// without its image.
func (ss *session) checkpoint(ctx context.Context) (string, *tier.Snapshot, *stepState, time.Duration, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if err := ss.usable(); err != nil {
		return "", nil, nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return "", nil, nil, 0, fmt.Errorf("heavy snapshot: %w", context.Cause(ctx))
	}
	e, s := ss.e, ss.s
	r, err := e.call(context.WithoutCancel(ctx), s, map[string]any{"op": "inspect", "state": true}, inspectTimeout, listLine, nil)
	if err != nil {
		var ae *agentError
		if !errors.As(err, &ae) || ae.Type == api.ErrGuestCrash || s.killed.Load() {
			ss.closeLocked()
			return "", nil, nil, 0, errdefs.With(errdefs.NotFound, fmt.Errorf("heavy snapshot: %w: %w", tier.ErrGone, err))
		}
		return "", nil, nil, 0, fmt.Errorf("heavy snapshot: inspecting the state: %w", err)
	}
	var ins inspection
	if err := json.Unmarshal(r.Raw, &ins); err != nil {
		return "", nil, nil, 0, fmt.Errorf("heavy snapshot: unreadable inspection: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return "", nil, nil, 0, fmt.Errorf("heavy snapshot: %w", context.Cause(ctx))
	}
	spec, err := os.ReadFile(filepath.Join(s.bundle, "config.json"))
	if err != nil {
		return "", nil, nil, 0, fmt.Errorf("heavy snapshot: the sandbox's spec: %w", err)
	}
	dir, err := e.scratchDir("snap-" + newID())
	if err != nil {
		return "", nil, nil, 0, err
	}
	cpStart := time.Now()
	out := &limitedBuffer{max: 16 << 10}
	cmd := e.runsc("checkpoint", "--leave-running", "--image-path", dir, s.id)
	cmd.Stdout, cmd.Stderr = out, out
	if err := runBoundedCtx(ctx, "checkpoint", cmd, checkpointTimeout); err != nil {
		return dir, nil, nil, 0, fmt.Errorf("heavy snapshot: runsc checkpoint: %w: %s", err, strings.TrimSpace(out.String()))
	}
	st := &stepState{Version: stateVersion, Spec: spec, Limits: ss.limits, Packages: ss.packages, Networked: s.ns != nil, Runs: s.runs}
	snap := &tier.Snapshot{Tier: api.TierHeavy, Variables: ins.Variables, Files: fileInfos(ins.Files)}
	return dir, snap, st, time.Since(cpStart), nil
}

// scratchDir makes a new directory for one image under the state root's steps/.
func (e *Engine) scratchDir(name string) (string, error) {
	dir := filepath.Join(e.cfg.StateDir, "steps", name)
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("heavy snapshot: scratch directory: %w", err)
	}
	return dir, nil
}

// putImage cuts every file of the image in dir into blocks, Puts them and records them in st.Files.
// It returns the distinct block ids, in first use, and the image's size.
func putImage(ctx context.Context, dir string, blocks tier.Blocks, st *stepState) ([]tier.BlockID, int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, err
	}
	seen := map[tier.BlockID]bool{}
	var ids []tier.BlockID
	var raw int64
	buf := make([]byte, snapBlock)
	for _, ent := range entries {
		if !ent.Type().IsRegular() {
			return nil, 0, fmt.Errorf("checkpoint image: %s is not a regular file", ent.Name())
		}
		f, err := os.Open(filepath.Join(dir, ent.Name()))
		if err != nil {
			return nil, 0, err
		}
		file := imageFile{Name: ent.Name()}
		var fileIDs []tier.BlockID
		r := bufio.NewReaderSize(f, 1<<20)
		for {
			if err := ctx.Err(); err != nil {
				f.Close()
				return nil, 0, err
			}
			n, rerr := io.ReadFull(r, buf)
			if n > 0 {
				id, err := blocks.Put(buf[:n])
				if err != nil {
					f.Close()
					return nil, 0, fmt.Errorf("storing a block: %w", err)
				}
				fileIDs = append(fileIDs, id)
				file.Size += int64(n)
				if !seen[id] {
					seen[id] = true
					ids = append(ids, id)
				}
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				break
			}
			if rerr != nil {
				f.Close()
				return nil, 0, fmt.Errorf("reading the checkpoint image: %w", rerr)
			}
		}
		f.Close()
		file.Blocks = packIDs(nil, fileIDs)
		raw += file.Size
		st.Files = append(st.Files, file)
	}
	if len(st.Files) == 0 {
		return nil, 0, errors.New("runsc checkpoint wrote an empty image")
	}
	return ids, raw, nil
}

// writeImage writes the image st describes into dir from blocks, checking every block's length (the
// store checks its content). A block that is missing or wrong is an error wrapping tier.ErrCorrupt.
func writeImage(ctx context.Context, dir string, blocks tier.Blocks, st *stepState) error {
	buf := make([]byte, 0, snapBlock)
	for _, file := range st.Files {
		if file.Name == "" || file.Name != filepath.Base(file.Name) || file.Name == "." || file.Name == ".." {
			return fmt.Errorf("%w: image file name %q", tier.ErrCorrupt, file.Name)
		}
		ids, err := file.blockIDs()
		if err != nil {
			return err
		}
		f, err := os.OpenFile(filepath.Join(dir, file.Name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		w := bufio.NewWriterSize(f, 1<<20)
		for i, id := range ids {
			if err := ctx.Err(); err != nil {
				f.Close()
				return err
			}
			want := int64(snapBlock)
			if i == len(ids)-1 {
				want = file.Size - int64(i)*snapBlock
			}
			b, err := blocks.Get(buf[:0], id)
			if err == nil && int64(len(b)) != want {
				err = fmt.Errorf("%w: block %d of %s has %d bytes, want %d", tier.ErrCorrupt, i, file.Name, len(b), want)
			}
			if err != nil {
				f.Close()
				return fmt.Errorf("rebuilding the checkpoint image: %w", err)
			}
			w.Write(b) // its error is Flush's
		}
		if err := w.Flush(); err != nil {
			f.Close()
			return fmt.Errorf("rebuilding the checkpoint image: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("rebuilding the checkpoint image: %w", err)
		}
	}
	return nil
}

// fileInfos converts the agent's file entries.
func fileInfos(entries []fileEntry) []api.FileInfo {
	out := make([]api.FileInfo, 0, len(entries))
	for _, e := range entries {
		out = append(out, api.FileInfo{Name: e.Name, Path: e.Path, Size: e.Size, IsDir: e.IsDir,
			ModTime: time.Unix(int64(e.MTime), 0).UTC().Format(time.RFC3339Nano)})
	}
	return out
}

// decodeState reads a heavy Snapshot's State.
func decodeState(snap *tier.Snapshot) (*stepState, error) {
	if snap == nil {
		return nil, errdefs.With(errdefs.InvalidArgument, errors.New("heavy restore: no snapshot"))
	}
	if snap.Tier != api.TierHeavy {
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("heavy restore: a snapshot of the %q tier", snap.Tier))
	}
	var st stepState
	if err := json.Unmarshal(snap.State, &st); err != nil {
		return nil, fmt.Errorf("heavy restore: %w: unreadable state: %v", tier.ErrCorrupt, err)
	}
	if st.Version != stateVersion {
		return nil, errdefs.With(errdefs.Unavailable, fmt.Errorf("heavy restore: snapshot state version %d; this server reads %d", st.Version, stateVersion))
	}
	if len(st.Files) == 0 || len(st.Spec) == 0 {
		return nil, fmt.Errorf("heavy restore: %w: the state names no image or spec", tier.ErrCorrupt)
	}
	return &st, nil
}

// preloaded reports whether a sandbox spec's process had the agent preload the scientific modules.
func preloaded(spec map[string]any) bool {
	proc, _ := spec["process"].(map[string]any)
	env, _ := proc["env"].([]any)
	return slices.Contains(env, any("AGENTBOX_PRELOAD=1"))
}

// specDrift compares the spec a restore will run under with the one the image was saved under and
// names the first difference runsc cannot take (gVisor #10673: a restore checks the mounts, root and
// process it finds against the image's). Only host-side settings may differ: the cgroup limits
// (memory, CPU share, pids backstop), the path of the network namespace, which is new for every
// sandbox, and the host paths bound in (the agent's files and /etc ones live in the engine's state
// root; gVisor checks the files themselves, and another engine's copies pass). The root filesystem's
// path names its build (build.sh's rootfs-<hash>), so it must be equal.
func specDrift(saved, now map[string]any) string {
	norm := func(spec map[string]any) map[string]any {
		b, _ := json.Marshal(spec)
		var c map[string]any
		json.Unmarshal(b, &c)
		if linux, ok := c["linux"].(map[string]any); ok {
			delete(linux, "resources")
			if nss, ok := linux["namespaces"].([]any); ok {
				for _, ns := range nss {
					if m, ok := ns.(map[string]any); ok {
						delete(m, "path")
					}
				}
			}
		}
		if ms, ok := c["mounts"].([]any); ok {
			for _, m := range ms {
				if m, ok := m.(map[string]any); ok && m["type"] == "bind" {
					delete(m, "source")
				}
			}
		}
		return c
	}
	a, b := norm(saved), norm(now)
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	slices.Sort(sorted)
	for _, k := range sorted {
		if !reflect.DeepEqual(a[k], b[k]) {
			x, _ := json.Marshal(a[k])
			y, _ := json.Marshal(b[k])
			return fmt.Sprintf("%s: saved %s, now %s", k, clip(string(x), 300), clip(string(y), 300))
		}
	}
	return ""
}

// Restore starts a session in the state snap describes: the image is written back from blocks into
// a scratch directory and restored into a new sandbox under the same spec but for limits (zero fields:
// the engine's defaults) and a network namespace of its own (the Guard ctx carries is attached, as
// NewSession does). The agent then reseeds the interpreter's random generators. It takes one of the
// engine's slots, given back at Close.
func (e *Engine) Restore(ctx context.Context, snap *tier.Snapshot, blocks tier.Blocks, limits api.Limits) (tier.Session, error) {
	st, err := decodeState(snap)
	if err != nil {
		return nil, err
	}
	lim, err := e.Limits(limits)
	if err != nil {
		return nil, err
	}
	if st.Networked != e.Networked() {
		return nil, errdefs.With(errdefs.Unavailable, fmt.Errorf("heavy restore: the snapshot was taken with networked=%v sandboxes, this engine's are networked=%v", st.Networked, e.Networked()))
	}
	var saved map[string]any
	if err := json.Unmarshal(st.Spec, &saved); err != nil {
		return nil, fmt.Errorf("heavy restore: %w: unreadable spec: %v", tier.ErrCorrupt, err)
	}
	release, err := e.admit(ctx)
	if err != nil {
		return nil, err
	}
	var cu cleanup
	defer cu.run()
	cu.add(release)
	e.busy.Add(1)
	defer e.busy.Add(-1)
	dir, err := e.scratchDir("restore-" + newID())
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir) // runsc holds the files it still reads open
	start := time.Now()
	if err := writeImage(ctx, dir, blocks, st); err != nil {
		return nil, fmt.Errorf("heavy restore: %w", err)
	}
	s, err := e.newSandboxSpec(ctx, lim.MemoryLimitMB, e.spec(lim.MemoryLimitMB, preloaded(saved), false), false, "restore", "--image-path", dir)
	if err != nil {
		return nil, fmt.Errorf("heavy restore: %w", err)
	}
	cu.add(func() { e.destroy(s) })
	now, err := readSpec(s.bundle)
	if err != nil {
		return nil, fmt.Errorf("heavy restore: %w", err)
	}
	if d := specDrift(saved, now); d != "" {
		return nil, errdefs.With(errdefs.Unavailable, fmt.Errorf("heavy restore: the snapshot was taken under another sandbox configuration (%s)", d))
	}
	rebuilt := time.Now()
	if _, err := e.attach(ctx, s, false); err != nil {
		return nil, fmt.Errorf("heavy restore: %w", err)
	}
	s.runs = max(st.Runs, 1)
	if _, err := e.call(ctx, s, map[string]any{"op": "inspect", "reseed": true}, reseedTimeout, smallLine, nil); err != nil {
		if errors.Is(err, errDied) {
			select {
			case <-s.done:
				err = fmt.Errorf("%w: %v: %s", err, s.exitErr, clip(strings.TrimSpace(s.stderr.String()), 2000))
			case <-time.After(killGrace):
			}
		}
		return nil, fmt.Errorf("heavy restore: the restored sandbox did not answer: %w", err)
	}
	if err := e.bind(ctx, s); err != nil {
		return nil, err
	}
	cu.release()
	stats := RestoreStats{Rebuild: rebuilt.Sub(start), Total: time.Since(start)}
	e.log.Debug("heavy: step restore", "id", s.id, "rebuild", stats.Rebuild, "total", stats.Total)
	return &session{e: e, s: s, limits: lim, packages: st.Packages, release: release, restored: stats}, nil
}

// readSpec reads a bundle's spec.
func readSpec(bundle string) (map[string]any, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, err
	}
	var spec map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(b), &spec); err != nil {
		return nil, fmt.Errorf("sandbox spec: %w", err)
	}
	return spec, nil
}
