package mcphost

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"time"
)

// Finding is one match of a Scanner: the detector's type (e.g. "credit_card"), its rule, and the
// byte range in the scanned text.
type Finding struct {
	Type, Rule string
	Start, End int
}

// Scanner is the DLP engine the relay consults on tool arguments and text results (internal/dlp's
// Engine, adapted at wiring). Redact replaces the findings in text.
type Scanner interface {
	Scan(text []byte) []Finding
	Redact(text []byte, findings []Finding) []byte
}

// Verdicts of a relayed call, as Event.Verdict reports them.
const (
	VerdictAllowed    = "allowed"
	VerdictDenied     = "denied"      // the tool is not allowed by the server's filter
	VerdictBlockedDLP = "blocked_dlp" // DLP found something and the server's policy is block
	VerdictRedacted   = "redacted"    // DLP findings were redacted (arguments or results)
	VerdictError      = "error"       // the server failed, timed out or broke the protocol
	VerdictUnknown    = "unknown_tool"
)

// Event is the record of one relayed tool call.
type Event struct {
	Time   time.Time
	Tenant string
	Server string
	Tool   string
	// ArgsShape is the arguments' JSON structure with every value replaced by its type, e.g.
	// {"a":"number","text":"string"}: what was passed, without the data.
	ArgsShape string
	// ArgsSHA256 is the hex SHA-256 of the arguments as received.
	ArgsSHA256 string
	Verdict    string
	// Findings are the DLP findings' types, in arguments ("args:credit_card") and results
	// ("result:email").
	Findings []string
	Duration time.Duration
	// Error is why a call failed (verdict error), or what was refused.
	Error string
	// IsError is the server's own result flag.
	IsError bool
}

// Recorder receives every relayed call (the audit log, wired at merge); the default logs to slog.
type Recorder interface {
	RecordMCPCall(ctx context.Context, ev Event)
}

// SlogRecorder logs each call at info level.
type SlogRecorder struct{ Logger *slog.Logger }

func (r SlogRecorder) RecordMCPCall(_ context.Context, ev Event) {
	r.Logger.Info("mcp call", "tenant", ev.Tenant, "server", ev.Server, "tool", ev.Tool, "args_shape", ev.ArgsShape,
		"args_sha256", ev.ArgsSHA256, "verdict", ev.Verdict, "findings", ev.Findings, "duration_ms", ev.Duration.Milliseconds(),
		"is_error", ev.IsError, "error", ev.Error)
}

// argsDigest is the arguments' hash and shape.
func argsDigest(args json.RawMessage) (sum, shapeText string) {
	h := sha256.Sum256(args)
	var v any
	if len(args) == 0 || json.Unmarshal(args, &v) != nil {
		return hex.EncodeToString(h[:]), "invalid"
	}
	b, _ := json.Marshal(shape(v, 0))
	return hex.EncodeToString(h[:]), string(b)
}

// shape replaces every leaf of v by its JSON type; arrays keep their first element's shape and
// say their length, so the shape stays small whatever the data.
func shape(v any, depth int) any {
	if depth > 8 {
		return "..."
	}
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = shape(e, depth+1)
		}
		return out
	case []any:
		if len(x) == 0 {
			return []any{}
		}
		return map[string]any{"array": len(x), "of": shape(x[0], depth+1)}
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "boolean"
	default:
		return "null"
	}
}

// scanArgs runs the scanner on every string in the arguments (keys and values), and with redact
// returns the arguments with the findings replaced. Strings are scanned one by one, so that a
// redaction never breaks the JSON around it.
func scanArgs(sc Scanner, args json.RawMessage, redact bool) (types []string, out json.RawMessage) {
	var v any
	if json.Unmarshal(args, &v) != nil {
		return nil, args
	}
	found := map[string]bool{}
	var walk func(v any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			m := make(map[string]any, len(x))
			for k, e := range x {
				m[scanString(sc, k, found, redact)] = walk(e)
			}
			return m
		case []any:
			for i := range x {
				x[i] = walk(x[i])
			}
			return x
		case string:
			return scanString(sc, x, found, redact)
		}
		return v
	}
	v = walk(v)
	for t := range found {
		types = append(types, t)
	}
	sort.Strings(types)
	if !redact || len(types) == 0 {
		return types, args
	}
	b, err := json.Marshal(v)
	if err != nil {
		return types, args
	}
	return types, b
}

func scanString(sc Scanner, s string, found map[string]bool, redact bool) string {
	fs := sc.Scan([]byte(s))
	if len(fs) == 0 {
		return s
	}
	for _, f := range fs {
		found[f.Type] = true
	}
	if !redact {
		return s
	}
	return string(sc.Redact([]byte(s), fs))
}

func prefixed(prefix string, types []string) []string {
	out := make([]string, len(types))
	for i, t := range types {
		out[i] = prefix + t
	}
	return out
}

func joinTypes(types []string) string { return strings.Join(types, ", ") }
