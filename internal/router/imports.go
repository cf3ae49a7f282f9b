// Package router chooses a tier for a program without running it: it reads the program's imports
// (Imports) and applies rules about what each tier provides.
package router

import (
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Import is one module a program imports.
type Import struct {
	Module string // dotted name, e.g. "os.path"
	Line   int    // 1-based line of the statement or call
}

// Top is the top-level package of the import ("os" for "os.path").
func (i Import) Top() string {
	top, _, _ := strings.Cut(i.Module, ".")
	return top
}

// Imports lists the absolute imports of Python source: import and from-import statements anywhere
// (inside functions, try blocks, after semicolons or compound-statement colons, spread over
// parentheses or backslash continuations), and __import__("x") / importlib.import_module("x") calls
// with a literal name. Relative imports are left out. Strings, docstrings and comments never count.
// It tolerates any input, including invalid Python.
func Imports(src string) []Import {
	toks := tokenize(src)
	var out []Import
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if t.kind != tkName {
			continue
		}
		switch {
		case t.text == "import" && t.stmtStart:
			i = parseImport(toks, i+1, &out)
		case t.text == "from" && t.stmtStart:
			i = parseFrom(toks, i+1, &out)
		case t.text == "__import__" || (t.text == "import_module" && i >= 2 && toks[i-1].text == "." && toks[i-2].text == "importlib"):
			// Only a whole literal argument counts: __import__("a" + b) names no module.
			if i+3 < len(toks) && toks[i+1].text == "(" && toks[i+2].kind == tkString && (toks[i+3].text == ")" || toks[i+3].text == ",") {
				if name := toks[i+2].str; validDotted(name) {
					out = append(out, Import{Module: name, Line: t.line})
				}
			}
		}
	}
	return out
}

// Modules returns the distinct top-level modules of imports, sorted.
func Modules(imports []Import) []string {
	seen := map[string]bool{}
	for _, im := range imports {
		seen[im.Top()] = true
	}
	out := make([]string, 0, len(seen))
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// parseImport reads "a.b as c, d" after "import".
func parseImport(toks []token, i int, out *[]Import) int {
	for i < len(toks) {
		name, next := dotted(toks, i)
		if name == "" {
			return i - 1
		}
		if validDotted(name) {
			*out = append(*out, Import{Module: name, Line: toks[i].line})
		}
		i = next
		if i+1 < len(toks) && toks[i].text == "as" && toks[i].kind == tkName {
			i += 2
		}
		if i < len(toks) && toks[i].text == "," && !toks[i].stmtStart {
			i++
			continue
		}
		return i - 1
	}
	return i
}

// parseFrom reads "x.y import ..." after "from"; relative imports ("from . import z") are skipped.
func parseFrom(toks []token, i int, out *[]Import) int {
	if i < len(toks) && (toks[i].text == "." || toks[i].text == "...") {
		return i
	}
	name, next := dotted(toks, i)
	if name == "" || next >= len(toks) || toks[next].text != "import" {
		return i - 1
	}
	if validDotted(name) {
		*out = append(*out, Import{Module: name, Line: toks[i].line})
	}
	return next
}

// dotted reads a dotted name starting at i and returns it and the index after it.
func dotted(toks []token, i int) (string, int) {
	var parts []string
	for i < len(toks) && toks[i].kind == tkName && !keyword[toks[i].text] && validName(toks[i].text) {
		parts = append(parts, toks[i].text)
		i++
		if i+1 < len(toks) && toks[i].text == "." && toks[i+1].kind == tkName {
			i++
			continue
		}
		break
	}
	return strings.Join(parts, "."), i
}

// validDotted reports whether s is a dotted Python name (identifiers may be Unicode, PEP 3131).
func validDotted(s string) bool {
	if s == "" || len(s) > 200 || !utf8.ValidString(s) {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if !validName(part) {
			return false
		}
	}
	return true
}

func validName(part string) bool {
	if part == "" {
		return false
	}
	for j, c := range part {
		if !(c == '_' || unicode.IsLetter(c) || j > 0 && unicode.IsDigit(c)) {
			return false
		}
	}
	return true
}

var keyword = map[string]bool{"import": true, "from": true, "as": true, "if": true, "else": true, "def": true,
	"class": true, "return": true, "for": true, "while": true, "try": true, "except": true, "with": true,
	"lambda": true, "not": true, "and": true, "or": true, "in": true, "is": true, "None": true, "True": true, "False": true}

type tokenKind int

const (
	tkName tokenKind = iota
	tkString
	tkOp
)

type token struct {
	kind      tokenKind
	text      string // names and operators
	str       string // a plain string literal's value (escapes not interpreted)
	line      int
	stmtStart bool // first token of a logical statement (line start, after ';' or a block ':')
}

// tokenize is a small Python lexer: enough to tell names, strings (with prefixes and triple quotes),
// comments, brackets and statement boundaries apart.
func tokenize(src string) []token {
	toks := make([]token, 0, len(src)/4+8)
	line, depth := 1, 0
	atStart := true
	lastColon := false
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
			if depth == 0 {
				atStart = true
			}
			continue
		case c == '\\' && i+1 < len(src) && src[i+1] == '\n':
			line++
			i += 2
			continue
		case c == ' ' || c == '\t' || c == '\r' || c == '\f':
			i++
			continue
		case c == '#':
			for i < len(src) && src[i] != '\n' {
				i++
			}
			continue
		}
		start := atStart || lastColon
		atStart, lastColon = false, false
		switch {
		case isNameStart(c):
			j := i
			for j < len(src) && isNameChar(src[j]) {
				j++
			}
			word := src[i:j]
			if j < len(src) && (src[j] == '"' || src[j] == '\'') && isStringPrefix(word) {
				s, end, lines := readString(src, j)
				raw := strings.ContainsAny(word, "fF")
				tk := token{kind: tkString, line: line, stmtStart: start}
				if !raw {
					tk.str = s
				}
				toks = append(toks, tk)
				line += lines
				i = end
				continue
			}
			toks = append(toks, token{kind: tkName, text: word, line: line, stmtStart: start})
			i = j
		case c == '"' || c == '\'':
			s, end, lines := readString(src, i)
			toks = append(toks, token{kind: tkString, str: s, line: line, stmtStart: start})
			line += lines
			i = end
		case c >= 0x80:
			// Non-ASCII identifiers: one name token for the whole run.
			j := i
			for j < len(src) && (src[j] >= 0x80 || isNameChar(src[j])) {
				j++
			}
			toks = append(toks, token{kind: tkName, text: src[i:j], line: line, stmtStart: start})
			i = j
		default:
			op := src[i : i+1] // a substring: no allocation per operator
			if c == '.' && strings.HasPrefix(src[i:], "...") {
				op = "..."
			}
			switch c {
			case '(', '[', '{':
				depth++
			case ')', ']', '}':
				if depth > 0 {
					depth--
				}
			case ';':
				if depth == 0 {
					atStart = true
				}
			case ':':
				// After a block colon at depth 0 a statement may follow on the same line.
				lastColon = depth == 0
			}
			toks = append(toks, token{kind: tkOp, text: op, line: line, stmtStart: start})
			i += len(op)
		}
	}
	return toks
}

func isNameStart(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isNameChar(c byte) bool  { return isNameStart(c) || c >= '0' && c <= '9' }

func isStringPrefix(w string) bool {
	if len(w) > 2 {
		return false
	}
	for i := 0; i < len(w); i++ {
		switch w[i] | 0x20 { // ASCII lower case
		case 'r', 'b', 'u', 'f':
		default:
			return false
		}
	}
	return true
}

// readString reads a string literal starting at the quote at i; it returns the body, the index after
// the literal and how many newlines it spans. Unterminated strings run to the end (or end of line).
func readString(src string, i int) (string, int, int) {
	q := src[i]
	delim := `"""`
	if q == '\'' {
		delim = "'''"
	}
	if strings.HasPrefix(src[i:], delim) {
		end := strings.Index(src[i+3:], delim)
		for end >= 0 && escaped(src, i+3+end) {
			next := strings.Index(src[i+3+end+1:], delim)
			if next < 0 {
				end = -1
				break
			}
			end += next + 1
		}
		if end < 0 {
			return src[i+3:], len(src), strings.Count(src[i:], "\n")
		}
		body := src[i+3 : i+3+end]
		return body, i + 3 + end + 3, strings.Count(body, "\n")
	}
	j := i + 1
	lines := 0
	for j < len(src) {
		switch src[j] {
		case '\\':
			if j+1 < len(src) && src[j+1] == '\n' {
				lines++
			}
			j += 2
			continue
		case q:
			return src[i+1 : j], j + 1, lines
		case '\n':
			return src[i+1 : j], j, lines // unterminated: the newline still ends the line
		}
		j++
	}
	return src[i+1:], len(src), lines
}

// escaped reports whether the character at k is preceded by an odd number of backslashes.
func escaped(src string, k int) bool {
	n := 0
	for k-1-n >= 0 && src[k-1-n] == '\\' {
		n++
	}
	return n%2 == 1
}
