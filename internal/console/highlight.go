package console

import (
	"html/template"
	"strings"
	"unicode"
	"unicode/utf8"
)

// A small Python tokenizer for the timeline's code: keywords, builtins, strings (prefixes, triple
// quotes), numbers, comments and decorators get a class each; everything is escaped. It never fails:
// unterminated strings run to the end of the line (or of the code, for triple quotes), as an editor
// would show them.

var pyKeywords = set("False None True and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield match case")

var pyBuiltins = set("print len range str int float list dict set tuple bool bytes open sum min max abs sorted enumerate zip map filter isinstance type repr round any all iter next super object Exception ValueError TypeError KeyError IndexError ZeroDivisionError RuntimeError self")

func set(words string) map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(words) {
		m[w] = true
	}
	return m
}

// token classes, as CSS classes.
const (
	tokKeyword = "kw"
	tokBuiltin = "bi"
	tokString  = "str"
	tokNumber  = "num"
	tokComment = "com"
	tokDeco    = "dec"
)

type token struct {
	class string // "" for plain text
	text  string
}

func tokenizePython(src string) []token {
	var out []token
	emit := func(class, text string) {
		if text == "" {
			return
		}
		if n := len(out); n > 0 && out[n-1].class == class {
			out[n-1].text += text
			return
		}
		out = append(out, token{class, text})
	}
	lineStart := true
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '#':
			end := strings.IndexByte(src[i:], '\n')
			if end < 0 {
				end = len(src) - i
			}
			emit(tokComment, src[i:i+end])
			i += end
			continue
		case c == '@' && lineStart:
			j := i + 1
			for j < len(src) && (isIdent(src[j]) || src[j] == '.') {
				j++
			}
			emit(tokDeco, src[i:j])
			i = j
			lineStart = false
			continue
		case c == '"' || c == '\'':
			n := stringLen(src[i:])
			emit(tokString, src[i:i+n])
			i += n
			lineStart = false
			continue
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(src) && src[i+1] >= '0' && src[i+1] <= '9':
			j := i
			for j < len(src) && (isIdent(src[j]) || src[j] == '.' ||
				(src[j] == '+' || src[j] == '-') && (src[j-1] == 'e' || src[j-1] == 'E') && !strings.HasPrefix(src[i:], "0x")) {
				j++
			}
			emit(tokNumber, src[i:j])
			i = j
			lineStart = false
			continue
		case isIdentStart(src[i:]):
			j := i
			for j < len(src) {
				r, size := utf8.DecodeRuneInString(src[j:])
				if !(r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r)) {
					break
				}
				j += size
			}
			word := src[i:j]
			// A string prefix: r"", b'', f"""...""", rb''.
			if j < len(src) && (src[j] == '"' || src[j] == '\'') && len(word) <= 2 && strings.Trim(strings.ToLower(word), "rbfu") == "" {
				n := stringLen(src[j:])
				emit(tokString, src[i:j+n])
				i = j + n
				lineStart = false
				continue
			}
			switch {
			case pyKeywords[word]:
				emit(tokKeyword, word)
			case pyBuiltins[word]:
				emit(tokBuiltin, word)
			default:
				emit("", word)
			}
			i = j
			lineStart = false
			continue
		}
		_, size := utf8.DecodeRuneInString(src[i:])
		emit("", src[i:i+size])
		if c == '\n' {
			lineStart = true
		} else if c != ' ' && c != '\t' {
			lineStart = false
		}
		i += size
	}
	return out
}

// stringLen is the length of the string literal at the start of s (which starts with a quote).
func stringLen(s string) int {
	q := s[:1]
	if strings.HasPrefix(s, q+q+q) {
		q = q + q + q
	}
	for i := len(q); i < len(s); i++ {
		switch {
		case s[i] == '\\':
			i++
		case strings.HasPrefix(s[i:], q):
			return i + len(q)
		case s[i] == '\n' && len(q) == 1:
			return i // unterminated: to the end of the line
		}
	}
	return len(s)
}

func isIdent(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isIdentStart(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return r == '_' || unicode.IsLetter(r)
}

// highlightPython renders code as escaped HTML with a span per token class.
func highlightPython(src string) template.HTML {
	var b strings.Builder
	for _, t := range tokenizePython(src) {
		if t.class == "" {
			b.WriteString(template.HTMLEscapeString(t.text))
			continue
		}
		b.WriteString(`<span class="` + t.class + `">` + template.HTMLEscapeString(t.text) + `</span>`)
	}
	return template.HTML(b.String())
}
