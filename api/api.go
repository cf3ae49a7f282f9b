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
	// Script runs the code like `python3 FILE`: a final expression gives no main result. False (the
	// default) is REPL semantics, like a notebook cell (docs/results.md).
	Script bool `json:"script,omitempty"`
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
	// Script is RunRequest.Script: script semantics instead of a notebook cell's.
	Script bool `json:"script,omitempty"`
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
