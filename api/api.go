// Package api defines the types that agentbox's engine, HTTP API and SDKs share: what a caller asks a
// sandbox to run, with which limits, and the SandboxResult it gets back. Field names and JSON tags are
// the wire contract.
package api

// Tier names a sandbox implementation.
type Tier string

// Tiers.
const (
	TierNano  Tier = "nano"  // CPython on WebAssembly in wazero: milliseconds to start, stdlib only
	TierHeavy Tier = "heavy" // CPython with numpy/pandas/matplotlib in gVisor
	TierAuto  Tier = "auto"  // chosen from the code's imports
)

// Error types that are not Python exception class names.
const (
	ErrTimeout             = "Timeout"
	ErrMemoryLimitExceeded = "MemoryLimitExceeded"
	ErrOutputLimitExceeded = "OutputLimitExceeded"
	// ErrGuestCrash is a fault of the guest program below Python (a WebAssembly trap such as a C stack
	// overflow); the sandbox is discarded.
	ErrGuestCrash = "GuestCrash"
	// ErrSandbox is a fault of agentbox itself.
	ErrSandbox = "SandboxError"
)

// TruncationMarker ends a stdout or stderr that went past its cap (OutputTruncated is then set).
const TruncationMarker = "\n[output truncated: limit reached]\n"

// Exit codes for limits, following shell conventions.
const (
	ExitTimeout = 124 // like timeout(1)
	ExitMemory  = 137 // like a process killed by the OOM killer (128+SIGKILL)
	ExitCrash   = 139 // like a segmentation fault (128+SIGSEGV)
)

// Limits bound one run or session. A zero field means the engine's default.
type Limits struct {
	// TimeoutMS is the wall-clock limit of one run, in milliseconds.
	TimeoutMS int `json:"timeout_ms,omitempty"`
	// MemoryLimitMB caps the guest's memory, in MiB.
	MemoryLimitMB int `json:"memory_limit_mb,omitempty"`
	// AllowedModules, when not empty, is the only top-level modules the program may import; importing
	// anything else raises ImportError naming the module. Standard-library modules imported by allowed
	// modules themselves are not restricted.
	AllowedModules []string `json:"allowed_modules,omitempty"`
	// MaxOutputBytes caps stdout and stderr, each.
	MaxOutputBytes int `json:"max_output_bytes,omitempty"`
	// MaxResultBytes caps one rich output (Result.Results): text past it is cut with
	// TruncationMarker, binary and JSON data past it left out (the output's metadata says which).
	MaxResultBytes int `json:"max_result_bytes,omitempty"`
	// MaxResultsBytes caps a run's rich outputs together; outputs past it are left out
	// (Result.ResultsOmitted counts them).
	MaxResultsBytes int `json:"max_results_bytes,omitempty"`
	// FigureSVG adds image/svg+xml to every matplotlib figure's output, next to image/png. It shapes
	// results rather than bounding the run, but travels with the limits to every run and session.
	FigureSVG bool `json:"figure_svg,omitempty"`
}

// File is a file placed into or taken out of a sandbox.
type File struct {
	// Path is absolute inside the sandbox, e.g. /data/input.csv.
	Path string `json:"path"`
	Data []byte `json:"data"`
}

// RunRequest is one program to run in a fresh sandbox.
type RunRequest struct {
	Code string `json:"code"`
	// Filename is how the program is named in tracebacks; empty means "main.py".
	Filename string `json:"filename,omitempty"`
	Tier     Tier   `json:"tier,omitempty"`
	Limits
	// Files are written into the sandbox before the program starts.
	Files []File `json:"files,omitempty"`
	// Stdin is the program's standard input.
	Stdin []byte `json:"stdin,omitempty"`
	// Packages are third-party packages installed before the program runs (heavy tier).
	Packages []string `json:"packages,omitempty"`
	// Network is the network the sandbox may use (see NetworkPolicy); nil means offline.
	Network *NetworkPolicy `json:"network,omitempty"`
	// Task is the trusted task text and Intent what it needs: the server derives network grants from
	// them (URLs named in Task, Intent's packages, URLs and git remotes), inside its ceiling.
	Task   string  `json:"task,omitempty"`
	Intent *Intent `json:"intent,omitempty"`
	// Script runs the code like `python3 FILE`: a final expression gives no main result. False (the
	// default) is REPL semantics, like a notebook cell (docs/results.md).
	Script bool `json:"script,omitempty"`
	// Env is added to the program's environment (os.environ); the sandbox never sees the host's.
	Env map[string]string `json:"env,omitempty"`
}

// Error describes why a program did not finish normally.
type Error struct {
	// Type is the Python exception class name (ZeroDivisionError, SyntaxError...) or one of the Err*
	// constants.
	Type      string `json:"type"`
	Message   string `json:"message"`
	Traceback string `json:"traceback,omitempty"`
}

// Result is the SandboxResult: what happened when a program ran.
type Result struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int    `json:"exit_code"`
	// Error is nil when the program ended without an uncaught exception or limit.
	Error          *Error  `json:"error"`
	DurationMS     float64 `json:"duration_ms"`
	Tier           Tier    `json:"tier"`
	TimedOut       bool    `json:"timed_out"`
	MemoryExceeded bool    `json:"memory_exceeded"`
	// OutputTruncated is set when stdout or stderr went past its cap; the kept text ends with a marker.
	OutputTruncated bool `json:"output_truncated"`
	// Artifacts are rich outputs, such as charts: every matplotlib figure shown or left open (heavy
	// tier).
	Artifacts []Artifact `json:"artifacts,omitempty"`
	// RouteReason says why tier "auto" chose Tier.
	RouteReason string `json:"route_reason,omitempty"`
	// FallbackFrom is set when the run failed on that tier for want of something the heavy tier has
	// and was run again on heavy; RouteReason then says why.
	FallbackFrom Tier `json:"fallback_from,omitempty"`
	// Missing is what a nano run failed for want of, as the sandbox's runner reported it; nil when it
	// did not fail that way. Only runs made in this process carry it (Local, and the server's own
	// fallback decision): it is not part of the HTTP API.
	Missing *Missing `json:"-"`
	// NetworkEvents are the connections and requests the run (or cell) made and the policy's verdicts.
	NetworkEvents []NetworkEvent `json:"network_events,omitempty"`
	// Results are the run's rich outputs in the order they happened (Jupyter-style, see Output): the
	// value of the final expression under REPL semantics, anything passed to display(), every
	// matplotlib figure shown or left open. Never null in the HTTP API.
	Results []Output `json:"results"`
	// ResultsOmitted is how many outputs were left out because the run's results passed
	// Limits.MaxResultsBytes.
	ResultsOmitted int `json:"results_omitted,omitempty"`
}

// Missing is what a nano program failed for want of.
type Missing struct {
	// Module is the top-level module the program could not import; empty when that was not the failure.
	Module string `json:"module"`
	// Feature is what the nano tier lacks by design and the heavy tier has ("threads", "processes",
	// "network", "tls", "native code"); empty when the nano build simply does not ship Module.
	Feature string `json:"feature"`
}

// Artifact is a rich output of a run.
type Artifact struct {
	Name string `json:"name"`
	MIME string `json:"mime"`
	// Data is the content (base64 in JSON). It is empty for a figure whose image is in Results:
	// Output is then its index there (a chart is sent once).
	Data []byte `json:"base64"`
	// Output is the index in Result.Results of the output holding this artifact's content; nil when
	// Data holds it.
	Output *int `json:"output,omitempty"`
}

// RunBody is the HTTP API's POST /v1/run request: RunRequest with files as a map from sandbox path
// to content (base64 in JSON).
type RunBody struct {
	Code     string `json:"code"`
	Filename string `json:"filename,omitempty"`
	Tier     Tier   `json:"tier,omitempty"`
	Limits
	Files map[string][]byte `json:"files,omitempty"`
	Stdin []byte            `json:"stdin,omitempty"`
	// Packages are third-party packages to install first; they need the heavy tier.
	Packages []string `json:"packages,omitempty"`
	// Network is the network the sandbox may use (see NetworkPolicy); nil means offline.
	Network *NetworkPolicy `json:"network,omitempty"`
	// Task is the trusted task text and Intent what it needs: the server derives network grants from
	// them (URLs named in Task, Intent's packages, URLs and git remotes), inside its ceiling.
	Task   string  `json:"task,omitempty"`
	Intent *Intent `json:"intent,omitempty"`
	// Script is RunRequest.Script: script semantics instead of a notebook cell's.
	Script bool `json:"script,omitempty"`
	// Env is RunRequest.Env.
	Env map[string]string `json:"env,omitempty"`
}

// RunResponse is POST /v1/run's answer: the result, and the files the program left under /output
// (base64 in JSON), each and in total capped by the server.
type RunResponse struct {
	Result
	Files map[string][]byte `json:"files"`
	// FilesOmitted lists /output files left out because of the caps.
	FilesOmitted []string `json:"files_omitted,omitempty"`
}

// SessionRequest is POST /v1/sessions.
type SessionRequest struct {
	Tier Tier `json:"tier,omitempty"`
	Limits
	// TTLSeconds is how long the session may stay idle before it is closed; zero means the server's
	// default.
	TTLSeconds int `json:"ttl_s,omitempty"`
	// Packages are third-party packages to install first; they need the heavy tier.
	Packages []string `json:"packages,omitempty"`
	// Network is the network the sandbox may use (see NetworkPolicy); nil means offline.
	Network *NetworkPolicy `json:"network,omitempty"`
	// Task is the trusted task text and Intent what it needs: the server derives network grants from
	// them (URLs named in Task, Intent's packages, URLs and git remotes), inside its ceiling.
	Task   string  `json:"task,omitempty"`
	Intent *Intent `json:"intent,omitempty"`
	// Env is added to the environment of the session's cells (os.environ) and shell commands; the
	// sandbox never sees the host's.
	Env map[string]string `json:"env,omitempty"`
}

// Session describes a session.
type Session struct {
	ID string `json:"id"`
	// Owner is the API key that started the session, as the server's hash of it (never the key);
	// empty on a server without keys. Only that key, or an admin key, sees the session.
	Owner      string `json:"owner,omitempty"`
	Tier       Tier   `json:"tier"`
	Limits     Limits `json:"limits"`
	TTLSeconds int    `json:"ttl_s"`
	Cells      int    `json:"cells"`
	CreatedAt  string `json:"created_at"`
	LastUsedAt string `json:"last_used_at"`
	// RouteReason says why a session of tier "auto" is on Tier.
	RouteReason string `json:"route_reason,omitempty"`
	// MovedFrom is set when the session started on that tier and moved to Tier, replaying its earlier
	// cells and copying its files; its id did not change.
	MovedFrom Tier `json:"moved_from,omitempty"`
	// Steps is how many steps the session's time-travel log holds, CurrentStep the one its state is
	// at (GET /v1/sessions/{id}/steps).
	Steps       int `json:"steps"`
	CurrentStep int `json:"current_step"`
}

// SessionRunRequest is POST /v1/sessions/{id}/run.
type SessionRunRequest struct {
	Code string `json:"code"`
}

// FileInfo is one entry of a file listing.
type FileInfo struct {
	Name    string `json:"name"`
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	IsDir   bool   `json:"is_dir"`
	ModTime string `json:"mod_time"`
}

// SessionList is GET /v1/sessions: the open sessions, oldest first.
type SessionList struct {
	Sessions []Session `json:"sessions"`
}

// FileList is GET /v1/sessions/{id}/files.
type FileList struct {
	Dir   string     `json:"dir"`
	Files []FileInfo `json:"files"`
}

// ErrorBody is every error response: {"error": {"code", "message"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail carries a machine-readable code (an errdefs class name such as "invalid_argument",
// "not_found", "overloaded") and a human-readable message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// AuditEvent is one record of the audit log (GET /v1/audit/events): what happened, who asked, where,
// and the hash chain fields that make an edit, a deletion or a reordering detectable. Sensitive
// content is never stored in clear: code, stdin and bodies appear as their sha256 and size, and long
// values are capped with the sha256 of the original (docs/audit.md).
type AuditEvent struct {
	// Schema is the event schema version (docs/audit-event.schema.json).
	Schema int `json:"schema"`
	// Seq is the event's position in the log, from 1, without gaps.
	Seq int64  `json:"seq"`
	ID  string `json:"id"`
	// Time is when the event was recorded, RFC 3339 with nanoseconds, UTC.
	Time string `json:"time"`
	// Type is one of run, session.create, session.move, session.close, session.expire, file.upload,
	// file.download, package.install, auth.failure, server.start, server.stop, policy.change,
	// egress.request, egress.dlp, mcp.call, audit.retention, command, command.input, command.kill.
	Type string `json:"type"`
	// Actor is the API key the request came with, as its id (never the key); "local" on a server
	// without keys, "system" for the server's own events.
	Actor   string `json:"actor"`
	Sandbox string `json:"sandbox,omitempty"`
	Session string `json:"session,omitempty"`
	Tier    string `json:"tier,omitempty"`
	// Verdict is allow, block or redact for decisions, ok or error for operations, deny for an
	// authentication failure.
	Verdict string         `json:"verdict"`
	Details map[string]any `json:"details,omitempty"`
	// PrevHash and Hash are the chain: Hash = sha256(PrevHash || the event's stored bytes), hex. They
	// are not part of the stored bytes.
	PrevHash string `json:"prev_hash,omitempty"`
	Hash     string `json:"hash,omitempty"`
	// LogHost is, in a fleet's answer, the host whose audit log (and hash chain) holds the event;
	// empty on a single host. It is not part of the stored bytes.
	LogHost string `json:"log_host,omitempty"`
}

// AuditEventList is GET /v1/audit/events: events newest first, and the cursor of the next page
// (empty on the last).
type AuditEventList struct {
	Events     []AuditEvent `json:"events"`
	NextCursor string       `json:"next_cursor,omitempty"`
	// HostsMissing, in a fleet's answer, names the hosts that did not answer: their events are not
	// in this page (the next page asks them again). Also in the X-Agentbox-Hosts-Missing header.
	HostsMissing []string `json:"hosts_missing,omitempty"`
}

// AuditCheckpoint is a signed statement of the log's head: after Seq events the chain's hash was
// Head. Signature is ed25519 over the message docs/audit.md gives, by the key KeyID names.
type AuditCheckpoint struct {
	Seq       int64  `json:"seq"`
	Head      string `json:"head"`
	Time      string `json:"time"`
	KeyID     string `json:"key_id"`
	Signature string `json:"signature"`
}

// AuditVerification is the result of checking the chain and the checkpoints' signatures.
type AuditVerification struct {
	OK bool `json:"ok"`
	// FirstSeq and LastSeq are the range checked; Events how many were.
	FirstSeq    int64 `json:"first_seq"`
	LastSeq     int64 `json:"last_seq"`
	Events      int64 `json:"events"`
	Checkpoints int   `json:"checkpoints"`
	// LastCheckpoint is the newest checkpoint within the range, when there is one.
	LastCheckpoint *AuditCheckpoint `json:"last_checkpoint,omitempty"`
	// BadSeq and BadEventID name the first event found wrong (zero and empty when OK), Problem says
	// what is wrong.
	BadSeq     int64  `json:"bad_seq,omitempty"`
	BadEventID string `json:"bad_event_id,omitempty"`
	Problem    string `json:"problem,omitempty"`
}

// AuditCount is one row of a report's totals.
type AuditCount struct {
	Key   string `json:"key"`
	Count int64  `json:"count"`
}

// AuditReport is a daily or weekly compliance report (GET /v1/audit/reports/{period}).
type AuditReport struct {
	Period string `json:"period"`
	// Start and End bound the period, RFC 3339, End excluded.
	Start       string       `json:"start"`
	End         string       `json:"end"`
	GeneratedAt string       `json:"generated_at"`
	Events      int64        `json:"events"`
	ByType      []AuditCount `json:"by_type"`
	ByVerdict   []AuditCount `json:"by_verdict"`
	ByTier      []AuditCount `json:"by_tier"`
	BySession   []AuditCount `json:"by_session"`
	ByActor     []AuditCount `json:"by_actor"`
	// TopBlocked are the destinations egress was refused to most; NewHosts those contacted in the
	// period for the first time in the log.
	TopBlocked []AuditCount `json:"top_blocked"`
	NewHosts   []string     `json:"new_hosts"`
	// DLPFindings counts findings by detector type (never the matched values).
	DLPFindings []AuditCount `json:"dlp_findings"`
	// PolicyChanges are the policy.change events of the period.
	PolicyChanges []AuditEvent `json:"policy_changes"`
	// Errors counts runs by error type (Timeout, MemoryLimitExceeded, exception names...), AuthFailures
	// the refused requests.
	Errors       []AuditCount `json:"errors"`
	AuthFailures int64        `json:"auth_failures"`
	// BlockedPerHour and EventsPerHour have one entry per hour of the period.
	BlockedPerHour []int64 `json:"blocked_per_hour"`
	EventsPerHour  []int64 `json:"events_per_hour"`
	// Verification checks the chain over the period, from the last signed checkpoint before it. In a
	// fleet's report it sums the hosts' (each host has its own chain, in Hosts): OK only when every
	// host answered and verified, FirstSeq and LastSeq zero, Problem naming the first host that did
	// not.
	Verification AuditVerification `json:"verification"`
	// Hosts are, in a fleet's report, the hosts whose logs it counts, each with its own chain's
	// verification; HostsMissing those that did not answer (not counted, not verified).
	Hosts        []AuditHostReport `json:"hosts,omitempty"`
	HostsMissing []string          `json:"hosts_missing,omitempty"`
}

// AuditHostReport is one host's part of a fleet's report: its events in the period and its own
// hash chain's verification.
type AuditHostReport struct {
	Host         string            `json:"host"`
	Events       int64             `json:"events"`
	Verification AuditVerification `json:"verification"`
}
