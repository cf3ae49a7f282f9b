// Package dlp finds secrets and personal data in text and HTTP messages, and
// redacts them. It is the detector behind the egress proxy's `dlp` policy and
// the `agentbox dlp scan` command.
//
// Detectors: gitleaks' rule set (compiled from its embedded rules file, see
// rules/), our own cloud-key rules, rule packs in the same TOML format, and
// validated PII detectors (payment cards, IBAN, email, phone, US SSN, JP My
// Number, JWT, PEM private keys). Findings carry a byte span and the
// detector, never the matched value.
package dlp

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/entersandbox/agentbox/internal/errdefs"
)

// Mode is what the engine does with a finding in an HTTP message. The strings
// are the API's `dlp` values. (The constants carry a Mode prefix because the
// function Redact takes the plain name.)
type Mode string

const (
	ModeBlock  Mode = "block"  // report; the caller refuses the message (the proxy answers 451)
	ModeRedact Mode = "redact" // rewrite the message with every finding replaced by [REDACTED:<type>]
	ModeLog    Mode = "log"    // report only
	ModeOff    Mode = "off"    // do not scan
)

// ParseMode validates a policy's `dlp` value; "" means Off.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeBlock, ModeRedact, ModeLog, ModeOff:
		return m, nil
	case "":
		return ModeOff, nil
	}
	return "", errdefs.With(errdefs.InvalidArgument, fmt.Errorf("dlp: unknown mode %q (want block, redact, log or off)", s))
}

// Detector types reported in Finding.Type.
const (
	TypeCard       = "card"
	TypeIBAN       = "iban"
	TypeEmail      = "email"
	TypePhone      = "phone"
	TypeUSSSN      = "us_ssn"
	TypeJPMyNumber = "jp_mynumber"
	TypeJWT        = "jwt"
	TypePrivateKey = "private_key"
	TypeSecret     = "secret"  // gitleaks and pack rules without a type of their own
	TypeLiteral    = "literal" // a value registered with Engine.WithLiterals (brokered secrets)
)

// Finding is one detection. It never holds the matched value, so it is safe
// to log, audit and return to the guest.
type Finding struct {
	Type  string `json:"type"`           // detector type (TypeCard, ..., or a pack rule's type)
	Rule  string `json:"rule"`           // gitleaks/pack rule id, or the detector name for built-in PII detectors
	Start int    `json:"start"`          // byte offset of the span in the scanned text
	End   int    `json:"end"`            // end of the span (exclusive)
	Part  string `json:"part,omitempty"` // in HTTP messages: "url", "header:<Name>", "body", "body/part[<n>]"
}

// Config configures an Engine.
type Config struct {
	// Packs are rule pack TOML files (gitleaks' format plus an optional
	// `type` per rule) added to the built-in rules. A pack rule with the id of
	// a built-in rule replaces it. Nil: built-in rules only.
	Packs []string
	// MaxScanBytes bounds the bytes scanned per HTTP message (URL, headers and
	// decoded body together). 0 means 256 KiB; negative is an error.
	MaxScanBytes int64
	// Disable lists detector types that are not run ("phone", "secret", ...;
	// an unknown type is an error). Nil: all detectors run.
	Disable []string
	// DisableRules lists rule ids (gitleaks or pack) that are not run (an
	// unknown id is an error). Nil: none.
	DisableRules []string
	// PhoneRegion is the CLDR region used for phone numbers written without
	// a country code. "" means "US".
	PhoneRegion string
	// NoBuiltinRules leaves out the embedded gitleaks and agentbox rules, so
	// only packs and the PII detectors run. False: built-in rules are used.
	NoBuiltinRules bool
}

// DefaultMaxScanBytes is MaxScanBytes' zero value.
const DefaultMaxScanBytes = 256 << 10

// Engine scans text. It is immutable after New and safe for concurrent use.
type Engine struct {
	rules       *ruleSet
	disabled    map[string]bool
	phoneRegion string
	maxScan     int64
	literals    []literal
}

// New compiles the built-in rules and cfg's packs. Pack errors name
// file:line; configuration errors are errdefs.InvalidArgument.
func New(cfg Config) (*Engine, error) {
	if cfg.MaxScanBytes < 0 {
		return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("dlp: MaxScanBytes %d is negative", cfg.MaxScanBytes))
	}
	e := &Engine{disabled: map[string]bool{}, phoneRegion: cfg.PhoneRegion, maxScan: cfg.MaxScanBytes}
	if e.phoneRegion == "" {
		e.phoneRegion = "US"
	}
	if e.maxScan == 0 {
		e.maxScan = DefaultMaxScanBytes
	}
	for _, t := range cfg.Disable {
		e.disabled[strings.TrimSpace(t)] = true
	}
	rs, err := buildRuleSet(cfg)
	if err != nil {
		return nil, errdefs.With(errdefs.InvalidArgument, err)
	}
	known := map[string]bool{TypeLiteral: true}
	for _, d := range piiDetectors {
		known[d.typ] = true
	}
	for _, t := range rs.types {
		known[t] = true
	}
	for t := range e.disabled {
		if !known[t] {
			return nil, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("dlp: Disable: no detector type %q", t))
		}
	}
	e.rules = rs
	return e, nil
}

// Literal is an exact value that must never leave a sandbox, such as a
// secret the proxy injects on the guest's behalf.
type Literal struct {
	Rule  string // reported as Finding.Rule, e.g. "secret:api.example.com"
	Value string // the value; values shorter than 4 bytes are ignored
}

type literal struct {
	rule  string
	value []byte
}

// WithLiterals returns an engine that also reports every occurrence of the
// given values (type TypeLiteral), including percent-, JSON- and
// base64-encoded ones. The receiver is not changed; compiled rules are shared.
func (e *Engine) WithLiterals(lits []Literal) *Engine {
	c := *e
	c.literals = slices.Clone(e.literals)
	for _, l := range lits {
		if len(l.Value) >= 4 {
			c.literals = append(c.literals, literal{rule: l.Rule, value: []byte(l.Value)})
		}
	}
	return &c
}

// RuleCount is the number of compiled regex rules (built-in and packs).
func (e *Engine) RuleCount() int { return len(e.rules.rules) }

// Scan returns the findings in text, ordered by Start. Text inside JSON
// string escapes, percent-encoding and base64 is decoded and scanned too; a
// finding there spans the whole encoded token.
func (e *Engine) Scan(text []byte) []Finding {
	return resolve(e.scanAll(text))
}

// scanAll is Scan before nested and duplicate findings are resolved: every
// rule that fired (the corpus test scores rules one by one).
func (e *Engine) scanAll(text []byte) []Finding {
	var fs []Finding
	e.scanDepth(text, 0, &fs)
	return fs
}

// maxDecodeDepth bounds nested decoding (base64 in a JSON string is depth 2).
const maxDecodeDepth = 2

func (e *Engine) scanDepth(text []byte, depth int, out *[]Finding) {
	first := len(*out)
	e.scanPlain(text, out)
	if depth >= maxDecodeDepth {
		return
	}
	segs := decodedSegments(text)
	if len(segs) == 0 {
		return
	}
	plain := newSpanIndex((*out)[first:])
	var extra []Finding
	for _, seg := range segs {
		var inner []Finding
		e.scanDepth(seg.decoded, depth+1, &inner)
		for _, f := range inner {
			// Plain text that merely contains a '+' or an escape is already
			// covered: keep the precise plain span.
			if !plain.overlaps(f.Type, seg.start, seg.end) {
				extra = append(extra, Finding{Type: f.Type, Rule: f.Rule, Start: seg.start, End: seg.end})
			}
		}
	}
	*out = append(*out, extra...)
}

// spanIndex answers "does a finding of this type overlap [s, e)?" in
// O(log n): per type, spans sorted by start with the running maximum end.
type spanIndex map[string]*typeSpans

type typeSpans struct {
	starts, maxEnds []int
}

func newSpanIndex(fs []Finding) spanIndex {
	byType := map[string][]Finding{}
	for _, f := range fs {
		byType[f.Type] = append(byType[f.Type], f)
	}
	idx := spanIndex{}
	for t, l := range byType {
		slices.SortFunc(l, func(a, b Finding) int { return cmp.Compare(a.Start, b.Start) })
		ts := &typeSpans{}
		m := -1
		for _, f := range l {
			m = max(m, f.End)
			ts.starts = append(ts.starts, f.Start)
			ts.maxEnds = append(ts.maxEnds, m)
		}
		idx[t] = ts
	}
	return idx
}

func (x spanIndex) overlaps(typ string, s, e int) bool {
	ts := x[typ]
	if ts == nil {
		return false
	}
	n, _ := slices.BinarySearch(ts.starts, e) // spans starting before e
	return n > 0 && ts.maxEnds[n-1] > s
}

// scanPlain runs every detector over text as it is.
func (e *Engine) scanPlain(text []byte, out *[]Finding) {
	st := &scanText{b: text}
	for _, d := range piiDetectors {
		if !e.disabled[d.typ] {
			d.find(e, st, out)
		}
	}
	e.rules.scan(text, e.disabled, out)
	if !e.disabled[TypeLiteral] {
		for _, l := range e.literals {
			for off := 0; ; {
				i := bytes.Index(text[off:], l.value)
				if i < 0 {
					break
				}
				*out = append(*out, Finding{Type: TypeLiteral, Rule: l.rule, Start: off + i, End: off + i + len(l.value)})
				off += i + len(l.value)
			}
		}
	}
}

// priority orders detectors when spans nest: a validated detector names the
// data more precisely than a regex rule, and a specific rule more precisely
// than the generic ones.
func priority(f Finding) int {
	switch {
	case f.Type == TypeLiteral:
		return 4
	case f.Type != TypeSecret && f.Rule == f.Type:
		return 3 // built-in validated detector
	case strings.HasPrefix(f.Rule, "generic"):
		return 1
	}
	return 2
}

// resolve sorts findings and drops exact duplicates and findings nested in a
// finding of the same or higher priority. Partly overlapping findings are
// kept (Redact merges them), so no matched byte is lost.
func resolve(fs []Finding) []Finding {
	if len(fs) < 2 {
		return fs
	}
	slices.SortFunc(fs, func(a, b Finding) int {
		return cmp.Or(cmp.Compare(a.Start, b.Start), cmp.Compare(b.End, a.End), cmp.Compare(priority(b), priority(a)))
	})
	kept := fs[:0:0]
	var active []Finding // kept findings that may still contain later ones
	for _, f := range fs {
		n := 0
		for _, a := range active {
			if a.End > f.Start {
				active[n] = a
				n++
			}
		}
		active = active[:n]
		contained := false
		for _, a := range active {
			if a.Start <= f.Start && f.End <= a.End && priority(a) >= priority(f) {
				contained = true
				break
			}
		}
		if contained {
			continue
		}
		kept = append(kept, f)
		active = append(active, f)
	}
	return kept
}

// Marker is the replacement text Redact writes for a finding of type typ.
func Marker(typ string) string { return "[REDACTED:" + typ + "]" }

// Redact returns a copy of text with each finding's span replaced by
// Marker(type). Overlapping spans are merged into one marker (the type of the
// earliest); spans outside text are clipped, empty ones ignored.
func Redact(text []byte, fs []Finding) []byte {
	return redactWith(text, fs, Marker)
}

func redactWith(text []byte, fs []Finding, marker func(string) string) []byte {
	spans := mergeSpans(fs, len(text))
	if len(spans) == 0 {
		return bytes.Clone(text)
	}
	var b bytes.Buffer
	b.Grow(len(text))
	pos := 0
	for _, s := range spans {
		b.Write(text[pos:s.Start])
		b.WriteString(marker(s.Type))
		pos = s.End
	}
	b.Write(text[pos:])
	return b.Bytes()
}

// mergeSpans clips spans to [0,n], drops empty ones and merges overlaps.
func mergeSpans(fs []Finding, n int) []Finding {
	var spans []Finding
	for _, f := range fs {
		s, e := max(f.Start, 0), min(f.End, n)
		if s < e {
			spans = append(spans, Finding{Type: f.Type, Start: s, End: e})
		}
	}
	slices.SortFunc(spans, func(a, b Finding) int { return cmp.Or(cmp.Compare(a.Start, b.Start), cmp.Compare(b.End, a.End)) })
	out := spans[:0]
	for _, s := range spans {
		if len(out) > 0 && s.Start < out[len(out)-1].End {
			out[len(out)-1].End = max(out[len(out)-1].End, s.End)
			continue
		}
		out = append(out, s)
	}
	return out
}
