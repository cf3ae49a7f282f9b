package tier

import (
	"context"
	"errors"

	"github.com/entersandbox/agentbox/api"
)

// BlockID names one block in the snapshot store; zero is no block.
type BlockID uint64

// MaxBlock is the largest block Blocks.Put takes. Tiers cut state into 4 KiB pages or blocks, the
// unit of deduplication; bigger blocks are for data that never repeats.
const MaxBlock = 1 << 20

// ErrCorrupt is wrapped by Blocks.Get for a block that is missing or fails its hash check, and by a
// Restore that met one.
var ErrCorrupt = errors.New("snapshot block is missing or corrupt")

// Blocks is the snapshot store as a tier sees it (internal/snapstore implements it): content-addressed
// blocks, deduplicated by a keyed hash so that a guest cannot craft a collision with another session's
// data, compressed by the store. Safe for concurrent use.
type Blocks interface {
	// Put stores data (at most MaxBlock bytes; the store copies it) and returns its id; equal data
	// returns the same id. An id names the same bytes for the store's life (ids are not reused for
	// other data), so a tier may keep copies of blocks by id.
	Put(data []byte) (BlockID, error)
	// Get appends the block's bytes to dst and returns the result, verified against its hash;
	// a missing or corrupt block returns an error wrapping ErrCorrupt.
	Get(dst []byte, id BlockID) ([]byte, error)
}

// View is a Blocks that stands for a longer-lived store for one snapshot, such as a transaction
// that holds what is put through it until the snapshot is committed. A tier that remembers block
// ids from one snapshot to the next (nano's page table) keys them by Store, and names them again
// only after Hold said they are all still stored; otherwise it puts their data again.
type View interface {
	Blocks
	// Store is the store whose ids the view's are: the same value for every view of one store.
	Store() Blocks
	// Hold keeps the blocks for this view's snapshot, as a Put of their data would, and reports
	// whether every one of them is still stored.
	Hold(ids []BlockID) bool
}

// StoreOf is the store b's ids belong to: b's Store when b is a View, else b itself.
func StoreOf(b Blocks) Blocks {
	if v, ok := b.(View); ok {
		return v.Store()
	}
	return b
}

// Snapshot is a session's state after a step, as its tier saved it.
type Snapshot struct {
	Tier api.Tier
	// State is the tier's own record of the sandbox (page table, registers, file manifest, image
	// layout); opaque to everyone else, kept by the store with the step.
	State []byte
	// Blocks lists every block State refers to (repeats allowed): the store keeps them while the
	// snapshot lives.
	Blocks []BlockID
	// Variables and Files describe the state for inspection without restoring it: the interpreter's
	// globals, and the file tree of the writable directories.
	Variables []api.Variable
	Files     []api.FileInfo
	// OpenFiles names the files the guest held open when the snapshot was taken; a restore does not
	// reopen them (documented per tier).
	OpenFiles []string
}

// Snapshotter is a Session that can save its state between cells.
type Snapshotter interface {
	// Snapshot captures the session's state as it is now, between cells, into blocks. The caller
	// runs it after the step's answer was sent; the session's next call waits for it.
	Snapshot(ctx context.Context, blocks Blocks) (*Snapshot, error)
}

// Restorer is an Engine that starts sessions from snapshots.
type Restorer interface {
	// Restore starts a new session in the state snap describes, with limits (zero fields: the
	// tier's defaults), in the network ctx carries, and with fresh entropy: Python's random module
	// (and numpy's global generator, if imported) is reseeded, so a fork does not repeat its
	// parent's random numbers. A block that fails its check returns an error wrapping ErrCorrupt.
	Restore(ctx context.Context, snap *Snapshot, blocks Blocks, limits api.Limits) (Session, error)
}
