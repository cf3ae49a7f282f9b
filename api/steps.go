package api

// Time travel: every session step (a cell, an upload, a rewind) leaves a snapshot of the sandbox's
// state, which can be inspected, rewound to or forked from (docs/time-travel.md).

// StepKind says what made a step.
type StepKind string

const (
	// StepStart is step 0: the session as it was created (packages installed, nothing run).
	StepStart StepKind = "start"
	// StepCell is a cell run with POST /v1/sessions/{id}/run.
	StepCell StepKind = "cell"
	// StepUpload is a file written with PUT /v1/sessions/{id}/files/{path}.
	StepUpload StepKind = "upload"
	// StepRewind is a rewind: the session continued from the state after step Target.
	StepRewind StepKind = "rewind"
	// StepFork is the first step of a forked session: the state after step Target of ForkedFrom.
	StepFork StepKind = "fork"
	// StepCommand is a shell command run in the session (heavy).
	StepCommand StepKind = "command"
	// StepRestore is a session brought back on another host of a fleet from the replica of step
	// Target, after its host (RestoredFrom) died; Lost steps ran there after Target and are gone.
	StepRestore StepKind = "restore"
)

// Snapshot states of a step.
const (
	SnapshotPending = "pending" // being written; restorable once stored
	SnapshotStored  = "stored"
	SnapshotMissing = "missing" // it could not be written (disk full, budget, a failure); Reason says
	SnapshotThinned = "thinned" // removed by retention
	SnapshotCorrupt = "corrupt" // a block failed its hash check
	SnapshotNone    = "none"    // the tier keeps no snapshots of this session
)

// Ways a step can be restored.
const (
	RestoreBySnapshot = "snapshot" // its own snapshot, on RestoreOn
	RestoreByReplay   = "replay"   // replaying the cells up to it, on RestoreOn
)

// Step is one entry of GET /v1/sessions/{id}/steps.
type Step struct {
	N    int      `json:"n"`
	Kind StepKind `json:"kind"`
	// Parent is the step whose state this one started from: N-1, except after a rewind; -1 for step 0.
	Parent int `json:"parent"`
	// Abandoned marks a step on a branch a later rewind left; it stays listed until retention removes it.
	Abandoned bool `json:"abandoned,omitempty"`
	// Tier is the tier the step ran on.
	Tier Tier `json:"tier"`
	// Code is a cell's code or a command line; Path is an upload's path.
	Code string `json:"code,omitempty"`
	Path string `json:"path,omitempty"`
	// Target is the step a rewind or fork started from.
	Target int `json:"target,omitempty"`
	// ForkedFrom is the session a fork step came from.
	ForkedFrom string `json:"forked_from,omitempty"`
	// At is when the step started (RFC 3339, UTC), DurationMS how long it ran.
	At         string  `json:"at"`
	DurationMS float64 `json:"duration_ms"`
	ExitCode   int     `json:"exit_code"`
	ErrorType  string  `json:"error_type,omitempty"`
	// StdoutHead is the start of the step's stdout (at most 200 bytes).
	StdoutHead string       `json:"stdout_head,omitempty"`
	Pinned     bool         `json:"pinned,omitempty"`
	Snapshot   StepSnapshot `json:"snapshot"`
	// RestoredFrom is, on a restore step, the host the session was on; Lost how many of its steps
	// after Target were not replicated and are gone.
	RestoredFrom string `json:"restored_from,omitempty"`
	Lost         int    `json:"lost,omitempty"`
}

// StepSnapshot is what is kept of the state after a step and whether it can be restored.
type StepSnapshot struct {
	State string `json:"state"` // one of the Snapshot* states
	// Bytes is what the step added to the store (new blocks, compressed, plus its manifest).
	Bytes      int64  `json:"bytes"`
	Restorable bool   `json:"restorable"`
	RestoreOn  Tier   `json:"restore_on,omitempty"`
	RestoreBy  string `json:"restore_by,omitempty"` // RestoreBySnapshot or RestoreByReplay
	// Reason says why the step cannot be restored, or how (for instance after a move of tiers).
	Reason string `json:"reason,omitempty"`
}

// StepList is GET /v1/sessions/{id}/steps, oldest first; Current is the step the session's state is at.
type StepList struct {
	Session string `json:"session"`
	Current int    `json:"current"`
	Steps   []Step `json:"steps"`
}

// Variable is one name in the interpreter's globals after a step.
type Variable struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Kind is "value", "module", "function" or "class"; modules and functions carry no Size.
	Kind string `json:"kind"`
	// Repr is a short repr (at most 200 characters), Size an estimate of its memory in bytes.
	Repr string `json:"repr"`
	Size int64  `json:"size,omitempty"`
}

// StepDetail is GET /v1/sessions/{id}/steps/{n}: the step, its full result, and the state after it.
type StepDetail struct {
	Step
	Result    *Result    `json:"result,omitempty"`
	Variables []Variable `json:"variables"`
	// Files is the file tree after the step (the writable directories), Path set on each entry.
	Files []FileInfo `json:"files"`
}

// RewindRequest is POST /v1/sessions/{id}/rewind; the answer is the Session.
type RewindRequest struct {
	Step int `json:"step"`
}

// ForkRequest is POST /v1/sessions/{id}/fork; the answer is the new Session. Zero fields take the
// parent's limits and the server's default TTL.
type ForkRequest struct {
	Step       int `json:"step"`
	TTLSeconds int `json:"ttl_s,omitempty"`
}
