package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"

	"github.com/entersandbox/agentbox/internal/limits"
)

// MaxValue caps each string stored in an event's details; a longer one is cut and its original's
// sha256 kept beside it as <key>_sha256, so that the log never grows with what a guest or client sent.
const MaxValue = 512

// maxDepth and maxItems cap nested details.
const (
	maxDepth = 6
	maxItems = 64
)

// sensitiveKeys are detail keys whose values are never stored, only their sha256 and size (code,
// stdin, bodies, secrets); sensitiveSuffixes also match after an underscore (request_body). Matched
// case-insensitively.
var (
	sensitiveKeys = []string{"code", "stdin", "body", "content", "data", "value", "secret", "password",
		"token", "authorization", "cookie", "api_key", "match", "arguments"}
	sensitiveSuffixes = []string{"body", "secret", "password", "token", "cookie", "content"}
)

func sensitive(k string) bool {
	k = strings.ToLower(k)
	for _, s := range sensitiveKeys {
		if k == s {
			return true
		}
	}
	for _, s := range sensitiveSuffixes {
		if strings.HasSuffix(k, "_"+s) {
			return true
		}
	}
	return false
}

// Redact returns details as they are stored: values under sensitive keys replaced by
// {"redacted": true, "sha256", "size"}, strings capped at MaxValue with <key>_sha256 of the original,
// nesting and lists capped. Values are reduced to JSON's types first (a struct becomes a map).
func Redact(details map[string]any) map[string]any {
	if len(details) == 0 {
		return nil
	}
	g, _ := toGeneric(details).(map[string]any)
	return redactMap(g, 0)
}

// toGeneric turns any JSON-encodable value into maps, slices, strings, float64s, bools and nils, so
// that what is stored is what the hash covers and what reading it back gives.
func toGeneric(v any) any {
	switch v := v.(type) {
	case nil, string, bool, float64:
		return v
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = toGeneric(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = toGeneric(x)
		}
		return out
	case []string:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = x
		}
		return out
	}
	// Anything else (structs, typed maps and slices) goes through its JSON form.
	b, err := json.Marshal(v)
	if err != nil {
		return "[not encodable: " + err.Error() + "]"
	}
	var g any
	json.Unmarshal(b, &g)
	return g
}

// Digest is how a sensitive value is stored: its sha256 and size.
func Digest(b []byte) map[string]any {
	sum := sha256.Sum256(b)
	return map[string]any{"redacted": true, "sha256": hex.EncodeToString(sum[:]), "size": float64(len(b))}
}

func redactMap(m map[string]any, depth int) map[string]any {
	out := make(map[string]any, len(m))
	n := 0
	for k, v := range m {
		if n == maxItems {
			out["_truncated_keys"] = float64(len(m) - maxItems)
			break
		}
		n++
		k = limits.Text(k, maxField)
		if sensitive(k) {
			if d, ok := v.(map[string]any); ok && d["redacted"] == true {
				out[k] = d // already a digest
				continue
			}
			out[k] = Digest(sensitiveBytes(v))
			continue
		}
		if s, ok := v.(string); ok && len(s) > MaxValue {
			sum := sha256.Sum256([]byte(s))
			out[k] = limits.Text(s, MaxValue)
			out[k+"_sha256"] = hex.EncodeToString(sum[:])
			continue
		}
		out[k] = redactValue(v, depth+1)
	}
	return out
}

func sensitiveBytes(v any) []byte {
	if s, ok := v.(string); ok {
		return []byte(s)
	}
	b, _ := json.Marshal(v)
	return b
}

func redactValue(v any, depth int) any {
	if depth > maxDepth {
		return "[nested too deep]"
	}
	switch v := v.(type) {
	case map[string]any:
		return redactMap(v, depth)
	case []any:
		if len(v) > maxItems {
			v = append(v[:maxItems:maxItems], "[truncated]")
		}
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = redactValue(x, depth+1)
		}
		return out
	case string:
		return limits.Text(v, MaxValue)
	}
	return v
}
