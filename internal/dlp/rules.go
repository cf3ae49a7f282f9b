package dlp

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
)

// rules/gitleaks.toml is gitleaks v8.30.1's config/gitleaks.toml, unchanged
// (MIT, rules/LICENSE.gitleaks). rules/agentbox.toml adds cloud keys it lacks.
//
//go:embed rules/gitleaks.toml rules/agentbox.toml
var builtinRules embed.FS

var builtinFiles = []string{"rules/gitleaks.toml", "rules/agentbox.toml"}

// packFile is the TOML shape of gitleaks' rules file and of our packs.
type packFile struct {
	Title      string
	MinVersion string `toml:"minVersion"`
	Allowlist  *packAllowlist
	Allowlists []packAllowlist
	Rules      []packRule
}

type packRule struct {
	ID          string
	Type        string // ours: defaults to "secret"
	Description string
	Regex       string
	SecretGroup int `toml:"secretGroup"`
	Entropy     float64
	Keywords    []string
	Path        string
	Allowlists  []packAllowlist
	Tags        []string
}

type packAllowlist struct {
	Description string
	Condition   string
	RegexTarget string `toml:"regexTarget"`
	Regexes     []string
	Stopwords   []string
	Paths       []string
	Commits     []string
}

type rule struct {
	id, typ     string
	re          *regexp.Regexp
	width       int           // longest possible match in bytes; -1: unbounded
	kwInMatch   bool          // every match contains a keyword, so keyword windows hold every match
	anchored    *anchoredRule // non-nil: the rule runs anchored at its keywords
	secretGroup int
	entropy     float64
	keywords    []string // lowercase; empty: always run
	allow       []allowlist
}

type allowlist struct {
	and       bool
	target    string // "secret", "match" or "line"
	regexes   []*regexp.Regexp
	stopwords []string // lowercase
}

type ruleSet struct {
	rules  []*rule
	types  []string // the types of all rules loaded (disabled ones too)
	global []allowlist
	// kw maps the first two bytes of each lowercase keyword to the rules
	// it gates, so one pass over the text finds the rules worth running.
	kw      map[[2]byte][]kwEntry
	always  []int // rules without keywords
	present [65536 / 64]uint64
}

type kwEntry struct {
	word string
	rule int
}

// Unsupported lists built-in gitleaks rules the engine does not run, with
// the reason; docs/dlp.md repeats it.
var Unsupported = map[string]string{
	"pkcs12-file": "matches a file path only; HTTP bodies have no path",
}

func buildRuleSet(cfg Config) (*ruleSet, error) {
	rs := &ruleSet{kw: map[[2]byte][]kwEntry{}}
	byID := map[string]int{}
	skip := map[string]bool{}
	for _, id := range cfg.DisableRules {
		skip[id] = true
	}
	known := map[string]bool{} // every rule id loaded, to catch typos in DisableRules
	add := func(r *rule) {
		if i, ok := byID[r.id]; ok {
			rs.rules[i] = r // a pack overrides a built-in rule of that id
			return
		}
		byID[r.id] = len(rs.rules)
		rs.rules = append(rs.rules, r)
	}
	load := func(name string, data []byte, builtin bool) error {
		_, rules, global, err := compilePack(name, data, builtin)
		if err != nil {
			return err
		}
		rs.global = append(rs.global, global...)
		seen := map[string]bool{}
		for _, r := range rules {
			if seen[r.id] {
				return fmt.Errorf("dlp: %s:%d: duplicate rule id %q", name, lineOfRule(data, r.id), r.id)
			}
			seen[r.id] = true
			known[r.id] = true
			rs.types = append(rs.types, r.typ)
			if !skip[r.id] {
				add(r)
			}
		}
		return nil
	}
	if !cfg.NoBuiltinRules {
		for _, f := range builtinFiles {
			data, err := builtinRules.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("dlp: read built-in rules: %w", err)
			}
			if err := load(f, data, true); err != nil {
				return nil, err
			}
		}
	}
	for _, p := range cfg.Packs {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("dlp: read rule pack: %w", err)
		}
		if err := load(p, data, false); err != nil {
			return nil, err
		}
	}
	for _, id := range cfg.DisableRules {
		if _, unsupported := Unsupported[id]; !known[id] && !unsupported {
			return nil, fmt.Errorf("dlp: DisableRules: no rule %q", id)
		}
	}
	for i, r := range rs.rules {
		if len(r.keywords) == 0 {
			rs.always = append(rs.always, i)
		}
		for _, k := range r.keywords {
			key := [2]byte{k[0], k[1]}
			rs.kw[key] = append(rs.kw[key], kwEntry{word: k, rule: i})
			b := uint16(k[0])<<8 | uint16(k[1])
			rs.present[b/64] |= 1 << (b % 64)
		}
	}
	return rs, nil
}

var typeRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// compilePack decodes and validates one rules file. Errors carry name:line.
func compilePack(name string, data []byte, builtin bool) (*packFile, []*rule, []allowlist, error) {
	var pf packFile
	md, err := toml.Decode(string(data), &pf)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, nil, nil, fmt.Errorf("dlp: %s:%d: %s", name, pe.Position.Line, pe.Message)
		}
		return nil, nil, nil, fmt.Errorf("dlp: %s: %w", name, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return nil, nil, nil, fmt.Errorf("dlp: %s:%d: unknown key %q", name, lineOfKey(data, k[len(k)-1]), k.String())
	}
	var global []allowlist
	gl := pf.Allowlists
	if pf.Allowlist != nil {
		gl = append(gl, *pf.Allowlist)
	}
	for _, a := range gl {
		al, ok, err := compileAllowlist(a)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("dlp: %s:%d: global allowlist: %w", name, lineOfKey(data, "regexes"), err)
		}
		if ok {
			global = append(global, al)
		}
	}
	var out []*rule
	for _, pr := range pf.Rules {
		if pr.ID == "" {
			return nil, nil, nil, fmt.Errorf("dlp: %s:%d: rule without id", name, lineOfNthRule(data, len(out)))
		}
		if _, ok := Unsupported[pr.ID]; ok && builtin {
			continue
		}
		if pr.Regex == "" {
			return nil, nil, nil, fmt.Errorf("dlp: %s:%d: rule %q: regex is required (path-only rules are not supported)", name, lineOfRule(data, pr.ID), pr.ID)
		}
		re, err := regexp.Compile(pr.Regex)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("dlp: %s:%d: rule %q: regex: %w", name, lineOfKeyInRule(data, pr.ID, "regex"), pr.ID, err)
		}
		if pr.SecretGroup < 0 || pr.SecretGroup > re.NumSubexp() {
			return nil, nil, nil, fmt.Errorf("dlp: %s:%d: rule %q: secretGroup %d but the regex has %d groups", name, lineOfKeyInRule(data, pr.ID, "secretGroup"), pr.ID, pr.SecretGroup, re.NumSubexp())
		}
		if pr.Entropy < 0 || pr.Entropy > 8 || math.IsNaN(pr.Entropy) {
			return nil, nil, nil, fmt.Errorf("dlp: %s:%d: rule %q: entropy %v outside 0..8 bits", name, lineOfKeyInRule(data, pr.ID, "entropy"), pr.ID, pr.Entropy)
		}
		typ := pr.Type
		if typ == "" {
			typ = TypeSecret
		}
		if !typeRe.MatchString(typ) {
			return nil, nil, nil, fmt.Errorf("dlp: %s:%d: rule %q: type %q must match %s", name, lineOfKeyInRule(data, pr.ID, "type"), pr.ID, typ, typeRe)
		}
		r := &rule{id: pr.ID, typ: typ, re: re, secretGroup: pr.SecretGroup, entropy: pr.Entropy, width: -1}
		sr, err := syntax.Parse(pr.Regex, syntax.Perl)
		var simple *syntax.Regexp
		if err == nil {
			simple = sr.Simplify()
			r.width = maxWidth(simple)
		}
		for _, k := range pr.Keywords {
			k = strings.ToLower(k)
			if len(k) < 2 {
				return nil, nil, nil, fmt.Errorf("dlp: %s:%d: rule %q: keyword %q is shorter than 2 bytes", name, lineOfKeyInRule(data, pr.ID, "keywords"), pr.ID, k)
			}
			r.keywords = append(r.keywords, k)
		}
		if sr != nil {
			r.kwInMatch = containsKeyword(simple, r.keywords)
			r.anchored = anchorable(sr, r.keywords)
		}
		for _, a := range pr.Allowlists {
			al, ok, err := compileAllowlist(a)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("dlp: %s:%d: rule %q: allowlist: %w", name, lineOfKeyInRule(data, pr.ID, "regexes"), pr.ID, err)
			}
			if ok {
				r.allow = append(r.allow, al)
			}
		}
		out = append(out, r)
	}
	return &pf, out, global, nil
}

// compileAllowlist returns ok=false for allowlists that can never apply to
// HTTP traffic (path- or commit-only ones, or AND lists needing a path).
func compileAllowlist(a packAllowlist) (allowlist, bool, error) {
	al := allowlist{target: a.RegexTarget}
	switch strings.ToUpper(a.Condition) {
	case "", "OR":
	case "AND":
		al.and = true
	default:
		return al, false, fmt.Errorf("condition %q (want OR or AND)", a.Condition)
	}
	switch al.target {
	case "":
		al.target = "secret"
	case "secret", "match", "line":
	default:
		return al, false, fmt.Errorf("regexTarget %q (want secret, match or line)", a.RegexTarget)
	}
	for _, s := range a.Regexes {
		re, err := regexp.Compile(s)
		if err != nil {
			return al, false, fmt.Errorf("regex: %w", err)
		}
		al.regexes = append(al.regexes, re)
	}
	for _, s := range a.Stopwords {
		al.stopwords = append(al.stopwords, strings.ToLower(s))
	}
	if al.and && (len(a.Paths) > 0 || len(a.Commits) > 0) {
		return al, false, nil // a path/commit condition never holds here
	}
	return al, len(al.regexes)+len(al.stopwords) > 0, nil
}

// lineOfRule finds the 1-based line of `id = "<id>"`; 0 if absent.
func lineOfRule(data []byte, id string) int {
	for i, l := range bytes.Split(data, []byte("\n")) {
		t := strings.TrimSpace(string(l))
		if strings.HasPrefix(t, "id") && strings.Contains(t, `"`+id+`"`) || strings.Contains(t, `'`+id+`'`) {
			return i + 1
		}
	}
	return 0
}

func lineOfNthRule(data []byte, n int) int {
	c := 0
	for i, l := range bytes.Split(data, []byte("\n")) {
		if strings.TrimSpace(string(l)) == "[[rules]]" {
			if c == n {
				return i + 1
			}
			c++
		}
	}
	return 0
}

// lineOfKeyInRule finds key's line within the [[rules]] block holding id.
func lineOfKeyInRule(data []byte, id, key string) int {
	start := lineOfRule(data, id)
	if start == 0 {
		return lineOfKey(data, key)
	}
	lines := bytes.Split(data, []byte("\n"))
	for i := start - 1; i >= 0 && i < len(lines); i-- { // back to the block header
		if strings.TrimSpace(string(lines[i])) == "[[rules]]" {
			start = i + 1
			break
		}
	}
	for i := start; i < len(lines); i++ {
		t := strings.TrimSpace(string(lines[i]))
		if t == "[[rules]]" {
			break
		}
		if isKeyLine(t, key) {
			return i + 1
		}
	}
	return start
}

func lineOfKey(data []byte, key string) int {
	for i, l := range bytes.Split(data, []byte("\n")) {
		if isKeyLine(strings.TrimSpace(string(l)), key) {
			return i + 1
		}
	}
	return 0
}

func isKeyLine(t, key string) bool {
	rest, ok := strings.CutPrefix(t, key)
	return ok && strings.HasPrefix(strings.TrimSpace(rest), "=")
}

// Rules run only near their keywords: a match contains its keyword
// (gitleaks' rules are written so), so a window from keywordBefore bytes
// before to keywordAfter bytes after each occurrence holds every match that
// is not longer than that. The window widens to the start of a token so
// that \b and prefixes see what they would in the whole text.
const (
	keywordBefore = 512
	keywordAfter  = 4096
	maxKeywordHit = 4096 // more occurrences than this: scan the whole text (anchored rules: no limit)
)

// scan runs the keyword-selected rules over text.
func (rs *ruleSet) scan(text []byte, disabled map[string]bool, out *[]Finding) {
	if len(rs.rules) == 0 {
		return
	}
	hits := make([][]int, len(rs.rules)) // keyword positions per rule; nil: not triggered
	whole := make([]bool, len(rs.rules))
	for _, i := range rs.always {
		whole[i] = true
	}
	// triggered but may match away from its keywords: scanned whole.
	wholeOnHit := func(i int) bool { return !rs.rules[i].kwInMatch }
	// Keyword prefilter: one pass, ASCII-lowercasing on the fly.
	for i := 0; i+1 < len(text); i++ {
		a, b := lower(text[i]), lower(text[i+1])
		k := uint16(a)<<8 | uint16(b)
		if rs.present[k/64]&(1<<(k%64)) == 0 {
			continue
		}
		for _, ent := range rs.kw[[2]byte{a, b}] {
			if whole[ent.rule] || !hasPrefixFold(text[i:], ent.word) {
				continue
			}
			if wholeOnHit(ent.rule) {
				whole[ent.rule] = true
				continue
			}
			if h := hits[ent.rule]; len(h) > 0 && h[len(h)-1] == i {
				continue // two keywords of one rule at one place
			}
			if len(hits[ent.rule]) >= maxKeywordHit && rs.rules[ent.rule].anchored == nil {
				whole[ent.rule] = true
				continue
			}
			hits[ent.rule] = append(hits[ent.rule], i)
		}
	}
	for i, r := range rs.rules {
		if disabled[r.typ] || !whole[i] && hits[i] == nil {
			continue
		}
		if whole[i] {
			r.find(text, 0, len(text), rs.global, out)
			continue
		}
		if r.anchored != nil {
			r.findAnchored(text, hits[i], rs.global, out)
			continue
		}
		for _, w := range windows(text, hits[i]) {
			r.find(text, w[0], w[1], rs.global, out)
		}
	}
}

// windows merges the keyword windows around positions (ascending).
func windows(text []byte, pos []int) [][2]int {
	var ws [][2]int
	for _, p := range pos {
		s, e := max(0, p-keywordBefore), min(len(text), p+keywordAfter)
		for lim := max(0, s-256); s > lim && !isSpace(text[s-1]); s-- {
		}
		if n := len(ws); n > 0 && s <= ws[n-1][1] {
			ws[n-1][1] = max(ws[n-1][1], e)
			continue
		}
		ws = append(ws, [2]int{s, e})
	}
	return ws
}

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\t' || c == '\r' }

// Go's regexp uses its backtracker, several times faster than its NFA, when
// the input is short for the program. Rules whose matches are bounded run
// on chunks of chunkSize bytes that overlap by the longest match (plus
// chunkContext bytes so \b and lazy prefixes see what precedes a chunk);
// each match is taken from the one chunk where it starts in the fresh part.
const (
	chunkSize    = 768
	chunkContext = 64
	maxChunked   = 384 // longest match width that is chunked
)

func (r *rule) find(text []byte, ws, we int, global []allowlist, out *[]Finding) {
	if r.width < 0 || r.width > maxChunked || we-ws <= chunkSize {
		r.findIn(text, ws, we, ws, we, global, out)
		return
	}
	step := chunkSize - r.width - chunkContext
	for cs := ws; cs < we; cs += step {
		from := max(ws, cs-chunkContext) // context before the fresh part
		if cs+step+r.width >= we {
			r.findIn(text, from, we, cs, we, global, out)
			break
		}
		r.findIn(text, from, cs+step+r.width, cs, cs+step, global, out)
	}
}

// maxFixed bounds the strings fixedSet enumerates.
const maxFixed = 64

// fixedCache memoises fixedSet over one regex's analysis (the analysis
// asks about every node from every ancestor).
type fixedCache map[*syntax.Regexp]fixedResult

type fixedResult struct {
	set []string
	ok  bool
}

// fixedSet returns the lowercase strings re can match, if they are few
// ("Api", [Aa]pi, (?i)api, A3T[A-Z0-9], sk|rk).
func (fc fixedCache) fixedSet(re *syntax.Regexp) ([]string, bool) {
	if r, ok := fc[re]; ok {
		return r.set, r.ok
	}
	set, ok := fc.compute(re)
	fc[re] = fixedResult{set, ok}
	return set, ok
}

func (fc fixedCache) compute(re *syntax.Regexp) ([]string, bool) {
	switch re.Op {
	case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return []string{""}, true
	case syntax.OpLiteral:
		return []string{strings.ToLower(string(re.Rune))}, true
	case syntax.OpCharClass:
		n := 0
		for i := 0; i+1 < len(re.Rune); i += 2 {
			n += int(re.Rune[i+1]-re.Rune[i]) + 1
		}
		if n > 2*maxFixed { // case pairs fold to one: count twice the bound
			return nil, false
		}
		seen := map[string]bool{}
		var out []string
		for i := 0; i+1 < len(re.Rune); i += 2 {
			for c := re.Rune[i]; c <= re.Rune[i+1]; c++ {
				if l := string(unicode.ToLower(c)); !seen[l] {
					seen[l] = true
					out = append(out, l)
				}
			}
		}
		return out, len(out) <= maxFixed
	case syntax.OpCapture:
		return fc.fixedSet(re.Sub[0])
	case syntax.OpQuest:
		sub, ok := fc.fixedSet(re.Sub[0])
		return append(sub, ""), ok && len(sub) < maxFixed
	case syntax.OpAlternate:
		var out []string
		for _, sub := range re.Sub {
			f, ok := fc.fixedSet(sub)
			if !ok || len(out)+len(f) > maxFixed {
				return nil, false
			}
			out = append(out, f...)
		}
		return out, true
	case syntax.OpConcat:
		out := []string{""}
		for _, sub := range re.Sub {
			f, ok := fc.fixedSet(sub)
			if !ok {
				return nil, false
			}
			if out = product(out, f); out == nil {
				return nil, false
			}
		}
		return out, true
	}
	return nil, false
}

// product is every a+b, or nil when that is more than maxFixed strings.
func product(as, bs []string) []string {
	if len(as)*len(bs) > maxFixed {
		return nil
	}
	out := make([]string, 0, len(as)*len(bs))
	for _, a := range as {
		for _, b := range bs {
			out = append(out, a+b)
		}
	}
	return out
}

// containsKeyword reports whether every match of re contains one of the
// (lowercase) keywords, judged from re's structure (false when unsure).
func containsKeyword(re *syntax.Regexp, kws []string) bool {
	return fixedCache{}.containsKeyword(re, kws)
}

func (fc fixedCache) containsKeyword(re *syntax.Regexp, kws []string) bool {
	if len(kws) == 0 {
		return false
	}
	all := func(ss []string) bool {
		for _, s := range ss {
			hit := false
			for _, k := range kws {
				if strings.Contains(s, k) {
					hit = true
					break
				}
			}
			if !hit {
				return false
			}
		}
		return true
	}
	if f, ok := fc.fixedSet(re); ok {
		return all(f)
	}
	switch re.Op {
	case syntax.OpCapture, syntax.OpPlus:
		return fc.containsKeyword(re.Sub[0], kws)
	case syntax.OpRepeat:
		return re.Min >= 1 && containsKeyword(re.Sub[0], kws)
	case syntax.OpAlternate:
		for _, sub := range re.Sub {
			if !fc.containsKeyword(sub, kws) {
				return false
			}
		}
		return true
	case syntax.OpConcat:
		// Adjacent fixed parts may spell a keyword together ("a" then
		// "ccess|uth" after the parser factors "access|auth").
		run := []string{""}
		for _, sub := range re.Sub {
			if f, ok := fc.fixedSet(sub); ok {
				if run = product(run, f); run == nil {
					run = []string{""} // too many to enumerate: start afresh
					continue
				}
				if all(run) {
					return true
				}
				continue
			}
			run = []string{""}
			if fc.containsKeyword(sub, kws) {
				return true
			}
		}
	}
	return false
}

// maxWidth is the longest text re can match, in bytes; -1 if unbounded.
func maxWidth(re *syntax.Regexp) int {
	switch re.Op {
	case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return 0
	case syntax.OpLiteral:
		n := 0
		for _, c := range re.Rune {
			switch {
			case re.Flags&syntax.FoldCase != 0 && strings.ContainsRune("kKsS", c):
				n += 3 // folds to the Kelvin sign or long s
			default:
				n += utf8.RuneLen(c)
			}
		}
		return n
	case syntax.OpCharClass:
		if len(re.Rune) > 0 && re.Rune[len(re.Rune)-1] < utf8.RuneSelf {
			return 1
		}
		return utf8.UTFMax
	case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		return utf8.UTFMax
	case syntax.OpCapture:
		return maxWidth(re.Sub[0])
	case syntax.OpQuest:
		return maxWidth(re.Sub[0])
	case syntax.OpRepeat:
		w := maxWidth(re.Sub[0])
		if w < 0 || re.Max < 0 {
			return -1
		}
		return w * re.Max
	case syntax.OpConcat, syntax.OpAlternate:
		total := 0
		for _, sub := range re.Sub {
			w := maxWidth(sub)
			if w < 0 {
				return -1
			}
			if re.Op == syntax.OpConcat {
				total += w
			} else {
				total = max(total, w)
			}
		}
		return total
	}
	return -1 // star, plus
}

// findIn reports r's matches in text[ws:we] that start in [minStart,
// maxStart) (offsets absolute; maxStart == we: no upper bound).
func (r *rule) findIn(text []byte, ws, we, minStart, maxStart int, global []allowlist, out *[]Finding) {
	win := text[ws:we]
	for _, m := range r.re.FindAllSubmatchIndex(win, -1) {
		if ws+m[0] < minStart || ws+m[0] >= maxStart && maxStart < we {
			continue // a neighbouring chunk has it
		}
		r.emit(win, ws, m, global, out)
	}
}

// emit applies the secret group, entropy and allowlists to match m of
// text (indices relative to text, which starts at off) and reports it.
func (r *rule) emit(text []byte, off int, m []int, global []allowlist, out *[]Finding) {
	s, e := m[0], m[1]
	if r.secretGroup > 0 {
		s, e = m[2*r.secretGroup], m[2*r.secretGroup+1]
	} else {
		for g := 1; 2*g+1 < len(m); g++ { // first non-empty group, as gitleaks does
			if m[2*g] >= 0 && m[2*g+1] > m[2*g] {
				s, e = m[2*g], m[2*g+1]
				break
			}
		}
	}
	if s < 0 || s >= e {
		return
	}
	secret := text[s:e]
	if r.entropy > 0 {
		if shannon(secret) <= r.entropy {
			return
		}
		if strings.HasPrefix(r.id, "generic") && !bytes.ContainsAny(secret, "0123456789") {
			return // generic rules: words without digits are rarely secrets
		}
	}
	if allowed(r.allow, text, m[0], m[1], s, e) || allowed(global, text, m[0], m[1], s, e) {
		return
	}
	*out = append(*out, Finding{Type: r.typ, Rule: r.id, Start: off + s, End: off + e})
}

// Most of gitleaks' rules read "[\w.-]{0,50}?(?:kw1|kw2|...)rest": a lazy
// identifier prefix, then a keyword. Go's NFA tries that at every byte; but
// a match can only continue at a keyword occurrence, which the prefilter
// already found. So such rules run "^(?:kw1|kw2|...)rest" anchored at each
// occurrence (past the previous match), and the match start is found by
// walking back over the prefix's class, at most its bound and never into
// the previous match: the same matches as the whole regex, leftmost-first.
type anchoredRule struct {
	re        *regexp.Regexp // ^(?:the regex without its lazy prefix)
	prefix    []rune         // the prefix's class ranges (pairs); nil: no prefix
	prefixMax int
}

// anchorable builds the anchored form of re when it has that shape: an
// optional lazy class prefix, then a part matching a few fixed strings that
// each begin with a keyword (and no assertions, which would see the cut).
func anchorable(re *syntax.Regexp, kws []string) *anchoredRule {
	if re.Op != syntax.OpConcat || len(re.Sub) < 2 {
		return nil
	}
	a := &anchoredRule{}
	subs := re.Sub
	if p := subs[0]; p.Op == syntax.OpRepeat && p.Flags&syntax.NonGreedy != 0 && p.Min == 0 && p.Max >= 0 && p.Max <= 64 && p.Sub[0].Op == syntax.OpCharClass {
		a.prefix, a.prefixMax = p.Sub[0].Rune, p.Max
		subs = subs[1:]
	}
	head := subs[0]
	if hasAssertion(head) {
		return nil
	}
	fixed, ok := fixedCache{}.fixedSet(head)
	if !ok || len(fixed) == 0 {
		return nil
	}
	for _, f := range fixed {
		if !slices.ContainsFunc(kws, func(k string) bool { return strings.HasPrefix(f, k) }) {
			return nil
		}
	}
	core := &syntax.Regexp{Op: syntax.OpConcat, Sub: subs, Flags: re.Flags}
	cre, err := regexp.Compile(`^(?:` + core.String() + `)`)
	if err != nil {
		return nil
	}
	a.re = cre
	return a
}

func hasAssertion(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return true
	}
	return slices.ContainsFunc(re.Sub, hasAssertion)
}

func inClass(ranges []rune, c rune) bool {
	for i := 0; i+1 < len(ranges); i += 2 {
		if ranges[i] <= c && c <= ranges[i+1] {
			return true
		}
	}
	return false
}

// findAnchored runs r's anchored form at each keyword position (ascending).
func (r *rule) findAnchored(text []byte, pos []int, global []allowlist, out *[]Finding) {
	a := r.anchored
	last := 0 // end of the previous match: the next one starts at or after it
	for _, p := range pos {
		if p < last {
			continue
		}
		m := a.re.FindSubmatchIndex(text[p:])
		if m == nil {
			continue
		}
		for i := range m {
			if m[i] >= 0 {
				m[i] += p
			}
		}
		s := p
		for n := 0; n < a.prefixMax && s > last; n++ {
			c, size := utf8.DecodeLastRune(text[:s])
			if !inClass(a.prefix, c) {
				break
			}
			s -= size
		}
		m[0] = s
		r.emit(text, 0, m, global, out)
		last = m[1]
	}
}

func allowed(lists []allowlist, text []byte, ms, me, s, e int) bool {
	for _, a := range lists {
		target := text[s:e]
		switch a.target {
		case "match":
			target = text[ms:me]
		case "line":
			ls := bytes.LastIndexByte(text[:ms], '\n') + 1
			le := bytes.IndexByte(text[me:], '\n')
			if le < 0 {
				le = len(text)
			} else {
				le += me
			}
			target = text[ls:le]
		}
		reHit := false
		for _, re := range a.regexes {
			if re.Match(target) {
				reHit = true
				break
			}
		}
		swHit := false
		if len(a.stopwords) > 0 {
			ls := strings.ToLower(string(text[s:e]))
			for _, w := range a.stopwords {
				if strings.Contains(ls, w) {
					swHit = true
					break
				}
			}
		}
		if a.and {
			if (len(a.regexes) == 0 || reHit) && (len(a.stopwords) == 0 || swHit) {
				return true
			}
		} else if reHit || swHit {
			return true
		}
	}
	return false
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func hasPrefixFold(b []byte, lowerWord string) bool {
	if len(b) < len(lowerWord) {
		return false
	}
	for i := 0; i < len(lowerWord); i++ {
		if lower(b[i]) != lowerWord[i] {
			return false
		}
	}
	return true
}

// shannon is the Shannon entropy of b in bits per byte.
func shannon(b []byte) float64 {
	if len(b) == 0 {
		return 0
	}
	var counts [256]int
	for _, c := range b {
		counts[c]++
	}
	h, n := 0.0, float64(len(b))
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}
