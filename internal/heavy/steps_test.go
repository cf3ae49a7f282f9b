package heavy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/tier"
	"github.com/entersandbox/agentbox/internal/tier/tiertest"
)

// generic is spec as runsc reads it back from config.json.
func generic(t *testing.T, spec map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSpecDriftAllowsOnlyHostSideChanges: a restore may change the cgroup limits, the network
// namespace's path and the host paths of bound files, and nothing runsc checks against the image
// (gVisor #10673): mounts, the root filesystem, the process.
func TestSpecDriftAllowsOnlyHostSideChanges(t *testing.T) {
	engine := func(mod func(e *Engine)) *Engine {
		e := &Engine{cfg: Config{DiskMB: 64, Pids: 64, Rootfs: "/cache/rootfs-abc"}, agentDir: "/state/agent", etcDir: "/state/etc"}
		if mod != nil {
			mod(e)
		}
		return e
	}
	withNetns := func(spec map[string]any, path string) map[string]any {
		linux := spec["linux"].(map[string]any)
		linux["namespaces"] = []map[string]any{{"type": "pid"}, {"type": "network", "path": path}}
		return spec
	}
	saved := engine(nil).spec(1024, true, true)
	cases := []struct {
		name  string
		saved map[string]any
		now   map[string]any
		drift string // "" or the key named
	}{
		{"same spec", saved, engine(nil).spec(1024, true, true), ""},
		{"other memory limit and CPU share", saved, engine(nil).spec(512, true, false), ""},
		{"a larger memory limit", saved, engine(nil).spec(2048, true, false), ""},
		{"another engine's bound files", saved, engine(func(e *Engine) { e.agentDir, e.etcDir = "/other/agent", "/other/etc" }).spec(1024, true, false), ""},
		{"a new network namespace", withNetns(engine(nil).spec(1024, true, true), "/ns/1"), withNetns(engine(nil).spec(1024, true, false), "/ns/2"), ""},
		{"other tmpfs size", saved, engine(func(e *Engine) { e.cfg.DiskMB = 32 }).spec(1024, true, false), "mounts"},
		{"no preload", saved, engine(nil).spec(1024, false, false), "process"},
		{"other process limit", saved, engine(func(e *Engine) { e.cfg.Pids = 32 }).spec(1024, true, false), "process"},
		{"another root filesystem build", saved, engine(func(e *Engine) { e.cfg.Rootfs = "/cache/rootfs-def" }).spec(1024, true, false), "root"},
		{"networked against offline", withNetns(engine(nil).spec(1024, true, true), "/ns/1"), engine(nil).spec(1024, true, false), "linux"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := specDrift(generic(t, c.saved), generic(t, c.now))
			if c.drift == "" && got != "" || c.drift != "" && !strings.HasPrefix(got, c.drift+":") {
				t.Fatalf("specDrift = %q, want %q", got, c.drift)
			}
		})
	}
	if !preloaded(generic(t, saved)) || preloaded(generic(t, engine(nil).spec(1024, false, false))) {
		t.Fatal("preloaded does not read AGENTBOX_PRELOAD from the spec")
	}
}

// imageDir writes files into a new directory.
func imageDir(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// testImage has an empty file, one of exactly a block, and one with repeated blocks and a short tail.
func testImage() map[string][]byte {
	page := bytes.Repeat([]byte{7}, snapBlock)
	other := bytes.Repeat([]byte{9}, snapBlock)
	big := append(append(append(append([]byte{}, page...), other...), page...), []byte("tail")...)
	return map[string][]byte{"checkpoint.img": big, "pages_meta.img": page, "empty.img": {}}
}

// TestImageBlocksRoundTrip: an image cut into blocks and written back is the same, byte for byte,
// and equal blocks are stored once.
func TestImageBlocksRoundTrip(t *testing.T) {
	files := testImage()
	blocks := tiertest.NewBlocks()
	var st stepState
	ids, raw, err := putImage(context.Background(), imageDir(t, files), blocks, &st)
	if err != nil {
		t.Fatal(err)
	}
	if raw != int64(3*snapBlock+4+snapBlock) || len(ids) != 3 {
		t.Fatalf("raw %d, %d distinct blocks (%v); want %d and 3", raw, len(ids), ids, 4*snapBlock+4)
	}
	if _, kept := blocks.Bytes(); kept != 2*snapBlock+4 {
		t.Fatalf("kept %d bytes, want %d", kept, 2*snapBlock+4)
	}
	out := t.TempDir()
	if err := writeImage(context.Background(), out, blocks, &st); err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(out, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes, %v; want %d", name, len(got), err, len(want))
		}
	}
}

// TestImageRebuildRefusesBadBlocks: a block that is missing, fails its hash, or has the wrong length,
// and a block table or file name that cannot be right, fail the rebuild with tier.ErrCorrupt.
func TestImageRebuildRefusesBadBlocks(t *testing.T) {
	blocks := tiertest.NewBlocks()
	var st stepState
	ids, _, err := putImage(context.Background(), imageDir(t, testImage()), blocks, &st)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		blocks func() *tiertest.Blocks
		state  func(st stepState) stepState
	}{
		{"corrupt block", func() *tiertest.Blocks { b := blocks.Clone(); b.Corrupt(ids[1]); return b }, nil},
		{"missing block", func() *tiertest.Blocks { b := blocks.Clone(); b.Drop(ids[0]); return b }, nil},
		{"block of the wrong length", func() *tiertest.Blocks { b := blocks.Clone(); b.Replace(ids[0], []byte("short")); return b }, nil},
		{"block table shorter than the file", nil, func(st stepState) stepState { return withFile(st, 0, func(f *imageFile) { f.Size += snapBlock }) }},
		{"block table longer than the file", nil, func(st stepState) stepState { return withFile(st, 0, func(f *imageFile) { f.Size -= snapBlock }) }},
		{"unreadable block table", nil, func(st stepState) stepState { return withFile(st, 0, func(f *imageFile) { f.Blocks = []byte{0xff} }) }},
		{"absurd file size", nil, func(st stepState) stepState { return withFile(st, 0, func(f *imageFile) { f.Size = 1 << 62 }) }},
		{"file name leaving the directory", nil, func(st stepState) stepState { return withFile(st, 1, func(f *imageFile) { f.Name = "../x" }) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, s := blocks, st
			if c.blocks != nil {
				b = c.blocks()
			}
			if c.state != nil {
				s = c.state(st)
			}
			err := writeImage(context.Background(), t.TempDir(), b, &s)
			if !errors.Is(err, tier.ErrCorrupt) {
				t.Fatalf("writeImage: %v, want ErrCorrupt", err)
			}
		})
	}
}

// withFile is st with file i changed by mod (st's own files untouched).
func withFile(st stepState, i int, mod func(f *imageFile)) stepState {
	st.Files = append([]imageFile(nil), st.Files...)
	mod(&st.Files[i])
	return st
}

// TestBlockTableRoundTrip: block tables decode to the ids they were made of, whatever their order,
// and runs of consecutive or repeated ids take a few bytes.
func TestBlockTableRoundTrip(t *testing.T) {
	seq := func(from, n int) []tier.BlockID {
		var ids []tier.BlockID
		for i := range n {
			ids = append(ids, tier.BlockID(from+i))
		}
		return ids
	}
	cases := []struct {
		name     string
		ids      []tier.BlockID
		maxBytes int
	}{
		{"none", nil, 0},
		{"one", []tier.BlockID{7}, 2},
		{"consecutive", seq(1, 30000), 4},
		{"one block repeated", slices.Repeat([]tier.BlockID{5}, 30000), 6},
		{"descending and jumping", []tier.BlockID{9, 3, 1 << 40, 2, 2, 1<<64 - 1, 0, 4}, 40},
		{"a previous step's run with new blocks inside", slices.Concat(seq(1, 1000), seq(5000, 10), seq(1011, 1000)), 16},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := imageFile{Name: "pages.img", Size: int64(len(c.ids)) * snapBlock, Blocks: packIDs(nil, c.ids)}
			if len(f.Blocks) > c.maxBytes {
				t.Fatalf("%d ids take %d bytes, want at most %d", len(c.ids), len(f.Blocks), c.maxBytes)
			}
			got, err := f.blockIDs()
			if err != nil || !slices.Equal(got, c.ids) && len(c.ids) > 0 {
				t.Fatalf("blockIDs = %v, %v; want %v", got, err, c.ids)
			}
		})
	}
}

// TestDecodeStateRefusesBadSnapshots: nothing, another tier's snapshot, unreadable or empty state,
// and a version this code does not read are refused, each with its class.
func TestDecodeStateRefusesBadSnapshots(t *testing.T) {
	good, err := json.Marshal(stepState{Version: stateVersion, Spec: json.RawMessage(`{}`), Files: []imageFile{{Name: "a"}}})
	if err != nil {
		t.Fatal(err)
	}
	future, _ := json.Marshal(stepState{Version: stateVersion + 1, Spec: json.RawMessage(`{}`), Files: []imageFile{{Name: "a"}}})
	cases := []struct {
		name  string
		snap  *tier.Snapshot
		class *errdefs.Class
		is    error
	}{
		{"no snapshot", nil, errdefs.InvalidArgument, nil},
		{"a nano snapshot", &tier.Snapshot{Tier: api.TierNano, State: good}, errdefs.InvalidArgument, nil},
		{"unreadable state", &tier.Snapshot{Tier: api.TierHeavy, State: []byte("{")}, nil, tier.ErrCorrupt},
		{"no image", &tier.Snapshot{Tier: api.TierHeavy, State: []byte(`{"version": 1, "spec": {}}`)}, nil, tier.ErrCorrupt},
		{"a later version", &tier.Snapshot{Tier: api.TierHeavy, State: future}, errdefs.Unavailable, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeState(c.snap)
			if err == nil || c.class != nil && errdefs.ClassOf(err) != c.class || c.is != nil && !errors.Is(err, c.is) {
				t.Fatalf("%v (class %v)", err, errdefs.ClassOf(err))
			}
		})
	}
	if _, err := decodeState(&tier.Snapshot{Tier: api.TierHeavy, State: good}); err != nil {
		t.Fatalf("a good state: %v", err)
	}
}
