package api

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// DLP modes: what the egress proxy does with outbound traffic in which a detector found secrets or
// personal data.
const (
	DLPBlock  = "block"  // refuse the request (HTTP 451 with the reason)
	DLPRedact = "redact" // replace each finding with [REDACTED:<type>] and send it
	DLPLog    = "log"    // send it unchanged and record the finding
	DLPOff    = "off"    // do not scan
)

// Network verdicts, as NetworkEvent.Verdict reports them.
const (
	VerdictAllowed    = "allowed"
	VerdictDenied     = "denied"
	VerdictRedacted   = "redacted"
	VerdictBlockedDLP = "blocked_dlp"
)

// NetworkPolicy is the network a run or session may use. A nil policy, or one with no Allow entries
// and no grants derived from a task, is offline. It can only narrow the server's ceiling: asking for
// a host the ceiling does not allow is refused (403) naming the ceiling rule.
type NetworkPolicy struct {
	// Allow lists the destinations the sandbox may reach: host names ("pypi.org"), wildcards
	// ("*.github.com" matches one or more labels below github.com, not github.com itself) or rules
	// that also bound methods and paths.
	Allow []HostRule `json:"allow,omitempty"`
	// Deny wins over Allow.
	Deny []HostRule `json:"deny,omitempty"`
	// DLP is one of the DLP* modes; empty means the ceiling's default.
	DLP string `json:"dlp,omitempty"`
	// DLPResponses scans responses too (block or redact them by DLP).
	DLPResponses bool `json:"dlp_responses,omitempty"`
	// InspectTLS terminates TLS with a certificate from the installation's CA so that methods, paths
	// and bodies are checked; nil means the ceiling's default. Hosts that pin certificates can be
	// allowed by name without inspection (HostRule.NoInspect).
	InspectTLS *bool `json:"inspect_tls,omitempty"`
	// Secrets are injected by the proxy into requests to their host only; the sandbox never sees
	// their values.
	Secrets []SecretRule `json:"secrets,omitempty"`
	// AllowWritesAfterDLP turns the flow rule off: by default, once DLP found something in a
	// sandbox's traffic, its later POST, PUT, PATCH and DELETE requests are denied. Only a ceiling
	// with allow_writes_after_dlp lets a request set it.
	AllowWritesAfterDLP bool `json:"allow_writes_after_dlp,omitempty"`
}

// HostRule is one Allow or Deny entry. In JSON it is either a string (the host) or an object.
type HostRule struct {
	Host string `json:"host"`
	// Methods, when not empty, are the only HTTP methods allowed (upper case).
	Methods []string `json:"methods,omitempty"`
	// Paths, when not empty, are the URL path prefixes allowed.
	Paths []string `json:"paths,omitempty"`
	// NoInspect allows the host by TLS server name without terminating TLS (for hosts that pin
	// certificates); methods and paths cannot then be checked, so they must be empty.
	NoInspect bool `json:"no_inspect,omitempty"`
}

// UnmarshalJSON takes a bare string as a host.
func (r *HostRule) UnmarshalJSON(b []byte) error {
	var host string
	if err := json.Unmarshal(b, &host); err == nil {
		*r = HostRule{Host: host}
		return nil
	}
	type plain HostRule
	var p plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields() // a mistyped "no_inspect" must not be dropped silently
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("a network rule is a host name or an object {host, methods, paths, no_inspect}: %w", err)
	}
	*r = HostRule(p)
	return nil
}

// SecretRule is a header the proxy sets on requests to Host. Value may name server-side secrets as
// ${NAME}, resolved from the server's secret store, never from the sandbox.
type SecretRule struct {
	Host   string `json:"host"`
	Header string `json:"header"`
	Value  string `json:"value"`
}

// Intent is what a trusted caller says a task needs; the server derives scoped grants from it (and
// from the task text) inside its ceiling, each naming its source.
type Intent struct {
	// Packages are pip package names: they grant the package index hosts, read-only.
	Packages []string `json:"packages,omitempty"`
	// URLs grant their origins with read-only methods (GET, HEAD, OPTIONS), path-scoped to the URL.
	URLs []string `json:"urls,omitempty"`
	// Git are git remotes (https URLs): they grant fetching from them.
	Git []string `json:"git,omitempty"`
}

// NetworkEvent is one connection or request a sandbox made and what the policy decided. It never
// carries matched values: detectors are named by type only.
type NetworkEvent struct {
	Time   string `json:"time"` // RFC 3339 with nanoseconds
	Host   string `json:"host,omitempty"`
	Port   int    `json:"port,omitempty"`
	Method string `json:"method,omitempty"` // empty for a connection whose requests were not inspected
	Path   string `json:"path,omitempty"`
	// BytesOut and BytesIn are what went to and came from the destination.
	BytesOut int64 `json:"bytes_out"`
	BytesIn  int64 `json:"bytes_in"`
	// Verdict is one of the Verdict* constants.
	Verdict string `json:"verdict"`
	// Rule names the policy rule or grant that decided ("allow:pypi.org", "ceiling:deny:*.internal",
	// "ssrf:private", "default:offline"), Source where a grant came from ("intent.packages",
	// "task:url", "policy").
	Rule      string   `json:"rule,omitempty"`
	Source    string   `json:"source,omitempty"`
	Detectors []string `json:"detectors,omitempty"`
	Reason    string   `json:"reason,omitempty"`
}
