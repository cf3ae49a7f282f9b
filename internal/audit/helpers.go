package audit

import "sort"

// VerdictOf maps the egress and MCP parts' verdict words (allowed, denied, blocked, redacted, error)
// to the log's; a word it does not know is returned as it is, for Record to refuse.
func VerdictOf(s string) string {
	switch s {
	case "allowed", "allow":
		return VerdictAllow
	case "denied", "deny", "blocked", "block", "blocked_dlp", "refused", "unknown_tool":
		return VerdictBlock
	case "redacted", "redact":
		return VerdictRedact
	case "error", "failed":
		return VerdictError
	}
	return s
}

// Detectors turns a list of detector types, one per finding ("email", "email", "aws_key"), into
// the details' detectors: [{type, count}], by type. Only types and counts, never what matched.
func Detectors(types []string) []map[string]any {
	counts := map[string]int{}
	for _, t := range types {
		counts[t]++
	}
	names := make([]string, 0, len(counts))
	for t := range counts {
		names = append(names, t)
	}
	sort.Strings(names)
	out := make([]map[string]any, 0, len(names))
	for _, t := range names {
		out = append(out, map[string]any{"type": t, "count": counts[t]})
	}
	return out
}
