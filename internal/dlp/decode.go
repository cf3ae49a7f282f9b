package dlp

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"unicode/utf8"
)

// segment is an encoded token of the scanned text and its decoded form.
// Findings in decoded map back to the whole token [start, end).
type segment struct {
	start, end int
	decoded    []byte
}

// decodedSegments finds the tokens whose decoded form may hide what the
// detectors look for: JSON strings with escapes ("\u0040", "\n" in a PEM
// key), percent/plus-encoded URL and form components, and base64 runs that
// decode to text.
func decodedSegments(text []byte) []segment {
	var segs []segment
	segs = appendJSONStrings(segs, text)
	segs = appendPercent(segs, text)
	segs = appendBase64(segs, text)
	return segs
}

func appendJSONStrings(segs []segment, text []byte) []segment {
	for i := 0; i < len(text); i++ {
		if text[i] != '"' {
			continue
		}
		esc := false
		j := i + 1
		for ; j < len(text) && text[j] != '"' && text[j] != '\n'; j++ {
			if text[j] == '\\' {
				esc = true
				j++
			}
		}
		if j >= len(text) || text[j] != '"' {
			continue // not a closed string on this line: look from the next quote
		}
		if esc {
			var s string
			if json.Unmarshal(text[i:j+1], &s) == nil && s != string(text[i+1:j]) {
				segs = append(segs, segment{start: i + 1, end: j, decoded: []byte(s)})
			}
		}
		i = j
	}
	return segs
}

// urlBoundary ends a URL/form component.
func urlBoundary(c byte) bool {
	switch c {
	case ' ', '\t', '\r', '\n', '"', '\'', '`', '<', '>', '&', '=', '?', ';', '/', '#', ',', '(', ')', '[', ']', '{', '}':
		return true
	}
	return false
}

func appendPercent(segs []segment, text []byte) []segment {
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c != '%' && c != '+' {
			continue
		}
		if c == '%' && !(i+2 < len(text) && isHex(text[i+1]) && isHex(text[i+2])) {
			continue
		}
		s := i
		for s > 0 && !urlBoundary(text[s-1]) {
			s--
		}
		e := i
		for e < len(text) && !urlBoundary(text[e]) {
			e++
		}
		if d, err := url.QueryUnescape(string(text[s:e])); err == nil && d != string(text[s:e]) {
			segs = append(segs, segment{start: s, end: e, decoded: []byte(d)})
		}
		i = e
	}
	return segs
}

func isHex(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func isB64Run(c byte) bool { return isAlnum(c) || c == '+' || c == '/' || c == '-' || c == '_' }

// minBase64 is the shortest run worth decoding (18 bytes of text).
const minBase64 = 24

func appendBase64(segs []segment, text []byte) []segment {
	for i := 0; i < len(text); {
		if !isB64Run(text[i]) {
			i++
			continue
		}
		s := i
		for i < len(text) && isB64Run(text[i]) {
			i++
		}
		e := i
		for e < len(text) && e-i < 2 && text[e] == '=' {
			e++
		}
		if i-s < minBase64 {
			continue
		}
		run := text[s:i]
		var d []byte
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(string(run)); err == nil {
				d = b
				break
			}
		}
		if d != nil && looksLikeText(d) {
			segs = append(segs, segment{start: s, end: e, decoded: d})
		}
	}
	return segs
}

// looksLikeText: valid UTF-8 and at most 5% control bytes, so random
// base64 noise (which decodes to binary) costs no further scanning.
func looksLikeText(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	ctl := 0
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' || c == 0x7f {
			ctl++
		}
	}
	return ctl*20 <= len(b) && len(bytes.TrimSpace(b)) > 0
}
