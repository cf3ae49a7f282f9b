package dlp

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"regexp"
	"slices"
	"strings"

	"github.com/nyaruka/phonenumbers"
)

// piiDetector is one of our validated detectors: a cheap candidate regex
// and a validator that decides.
type piiDetector struct {
	typ  string
	find func(e *Engine, st *scanText, out *[]Finding)
}

// scanText is the text under scan with the digit windows the numeric
// detectors share: Go's regexp costs per byte, so the numeric regexes run
// only on runs of digits and separators long enough to hold a number.
type scanText struct {
	b       []byte
	wins    [][2]int
	winsSet bool
}

// minWindowDigits is the fewest digits any numeric detector needs (phone).
const minWindowDigits = 7

func (st *scanText) digitWindows() [][2]int {
	if st.winsSet {
		return st.wins
	}
	st.winsSet = true
	b := st.b
	for i := 0; i < len(b); {
		if !isDigit(b[i]) {
			i++
			continue
		}
		s := i
		for s > 0 && isNumSep(b[s-1]) && !isDigit(b[s-1]) {
			s-- // a leading '+' or '('
		}
		n := 0
		for i < len(b) && (isDigit(b[i]) || isNumSep(b[i])) {
			if isDigit(b[i]) {
				n++
			}
			i++
		}
		if n >= minWindowDigits {
			st.wins = append(st.wins, [2]int{s, i})
		}
	}
	return st.wins
}

func isNumSep(c byte) bool {
	return c == ' ' || c == '-' || c == '.' || c == '(' || c == ')' || c == '+'
}

// findAllIn runs re over each window; indices are absolute.
func findAllIn(re *regexp.Regexp, b []byte, wins [][2]int, fn func(m []int)) {
	for _, w := range wins {
		for _, m := range re.FindAllSubmatchIndex(b[w[0]:w[1]], -1) {
			for i := range m {
				if m[i] >= 0 {
					m[i] += w[0]
				}
			}
			fn(m)
		}
	}
}

var piiDetectors = []piiDetector{
	{TypePrivateKey, findPrivateKeys},
	{TypeJWT, findJWTs},
	{TypeCard, findCards},
	{TypeIBAN, findIBANs},
	{TypeEmail, findEmails},
	{TypeUSSSN, findSSNs},
	{TypeJPMyNumber, findMyNumbers},
	{TypePhone, findPhones},
}

func emit(out *[]Finding, typ string, s, e int) {
	*out = append(*out, Finding{Type: typ, Rule: typ, Start: s, End: e})
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlnum(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// digitBounded reports whether text[s:e] is not glued to more digits (or to
// digit groups joined by '-' or '.'), i.e. it is a whole number token.
func digitBounded(text []byte, s, e int) bool {
	if s > 0 {
		c := text[s-1]
		if isAlnum(c) || c == '_' {
			return false
		}
		if (c == '-' || c == '.' || c == '/') && s > 1 && isDigit(text[s-2]) {
			return false
		}
	}
	if e < len(text) {
		c := text[e]
		if isAlnum(c) || c == '_' {
			return false
		}
		if (c == '-' || c == '.' || c == '/') && e+1 < len(text) && isDigit(text[e+1]) {
			return false
		}
	}
	return true
}

// groupBounded reports whether the grouped number text[s:e] (groups joined
// by sep) is not one piece of a longer grouping, as in "4111 1111 1111 1112".
func groupBounded(text []byte, s, e int, sep byte) bool {
	if s > 1 && text[s-1] == sep && isDigit(text[s-2]) {
		return false
	}
	return !(e+1 < len(text) && text[e] == sep && isDigit(text[e+1]))
}

func digitsOf(b []byte) []byte {
	d := make([]byte, 0, len(b))
	for _, c := range b {
		if isDigit(c) {
			d = append(d, c-'0')
		}
	}
	return d
}

// consistentSeparators: groups are split by one kind of separator or none.
func consistentSeparators(b []byte) bool {
	var sep byte
	for _, c := range b {
		if !isDigit(c) {
			if sep != 0 && c != sep {
				return false
			}
			sep = c
		}
	}
	return true
}

// ---- payment cards ----

var cardRe = regexp.MustCompile(`\d(?:[ -]?\d){12,18}`)

func findCards(_ *Engine, st *scanText, out *[]Finding) {
	text := st.b
	findAllIn(cardRe, text, st.digitWindows(), func(m []int) {
		s, e := m[0], m[1]
		if !digitBounded(text, s, e) || !consistentSeparators(text[s:e]) {
			return
		}
		if d := digitsOf(text[s:e]); luhn(d) && cardIssuer(d) != "" {
			emit(out, TypeCard, s, e)
		}
	})
}

func luhn(d []byte) bool {
	sum := 0
	for i := range d {
		v := int(d[len(d)-1-i])
		if i%2 == 1 {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
	}
	return len(d) > 0 && sum%10 == 0
}

// cardIssuer returns the scheme whose IIN range and length d fits, or "".
func cardIssuer(d []byte) string {
	n := len(d)
	pre := func(k int) int {
		v := 0
		for i := 0; i < k && i < n; i++ {
			v = v*10 + int(d[i])
		}
		return v
	}
	in := func(k, lo, hi int) bool { p := pre(k); return lo <= p && p <= hi }
	switch {
	case d[0] == 4 && (n == 13 || n == 16 || n == 19):
		return "visa"
	case (in(2, 51, 55) || in(4, 2221, 2720)) && n == 16:
		return "mastercard"
	case (in(2, 34, 34) || in(2, 37, 37)) && n == 15:
		return "amex"
	case (in(4, 6011, 6011) || in(2, 65, 65) || in(3, 644, 649)) && n >= 16 && n <= 19:
		return "discover"
	case in(4, 3528, 3589) && n >= 16 && n <= 19:
		return "jcb"
	case in(2, 62, 62) && n >= 16 && n <= 19:
		return "unionpay"
	case (in(3, 300, 305) || in(2, 36, 36) || in(2, 38, 39)) && n >= 14 && n <= 19:
		return "diners"
	}
	return ""
}

// ---- IBAN ----

// ibanLengths is the SWIFT IBAN registry's length per country.
var ibanLengths = map[string]int{
	"AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
	"BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
	"EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
	"GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
	"IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
	"LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
	"NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
	"RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
	"SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}

func isUpper(c byte) bool { return 'A' <= c && c <= 'Z' }

func findIBANs(_ *Engine, st *scanText, out *[]Finding) {
	text := st.b
	for s := 0; s+4 <= len(text); s++ {
		if !isUpper(text[s]) || !isUpper(text[s+1]) || !isDigit(text[s+2]) || !isDigit(text[s+3]) {
			continue
		}
		if s > 0 && (isAlnum(text[s-1]) || text[s-1] == '_') {
			continue
		}
		want, ok := ibanLengths[string(text[s:s+2])]
		if !ok {
			continue
		}
		// Walk want alphanumerics, allowing single spaces between them
		// (the printed form groups by four).
		chars := make([]byte, 0, want)
		i := s
		for i < len(text) && len(chars) < want {
			c := text[i]
			switch {
			case isDigit(c) || 'A' <= c && c <= 'Z':
				chars = append(chars, c)
				i++
			case c == ' ' && len(chars) > 0 && i+1 < len(text) && text[i+1] != ' ':
				i++
			default:
				i = len(text) + 1
			}
		}
		if len(chars) != want || i > len(text) || (i < len(text) && (isAlnum(text[i]) || text[i] == '_')) {
			continue
		}
		if ibanValid(chars) {
			emit(out, TypeIBAN, s, i)
		}
	}
}

func ibanValid(chars []byte) bool {
	r := 0
	step := func(v int) {
		if v >= 10 {
			r = (r*100 + v) % 97
		} else {
			r = (r*10 + v) % 97
		}
	}
	for _, c := range append(append([]byte{}, chars[4:]...), chars[:4]...) {
		if isDigit(c) {
			step(int(c - '0'))
		} else {
			step(int(c-'A') + 10)
		}
	}
	return r == 1
}

// ---- email ----

func isLocalChar(c byte) bool  { return isAlnum(c) || strings.IndexByte("._%+-", c) >= 0 }
func isDomainChar(c byte) bool { return isAlnum(c) || c == '-' || c == '.' }

// notTLDs are endings that make "name@2x.png" look like an address.
var notTLDs = map[string]bool{
	"png": true, "jpg": true, "jpeg": true, "gif": true, "svg": true, "webp": true, "ico": true, "bmp": true,
	"js": true, "mjs": true, "css": true, "map": true, "json": true, "html": true, "htm": true, "txt": true,
	"py": true, "go": true, "rs": true, "ts": true, "tsx": true, "jsx": true, "md": true, "yaml": true, "yml": true,
	"lock": true, "toml": true, "xml": true, "pdf": true, "zip": true, "gz": true, "tar": true, "whl": true,
	"local": true, "localhost": true, "internal": true, "example": true, "invalid": true, "test": true,
}

func findEmails(_ *Engine, st *scanText, out *[]Finding) {
	text := st.b
	for off := 0; ; {
		i := bytes.IndexByte(text[off:], '@')
		if i < 0 {
			return
		}
		at := off + i
		off = at + 1
		s := at
		for s > 0 && at-s < 64 && isLocalChar(text[s-1]) {
			s--
		}
		if s == at || s > 0 && isLocalChar(text[s-1]) {
			continue // empty or longer than 64: not an address
		}
		e := at + 1
		for e < len(text) && e-at <= 253 && isDomainChar(text[e]) {
			e++
		}
		for e > at+1 && (text[e-1] == '.' || text[e-1] == '-') {
			e-- // sentence punctuation after the address
		}
		if e < len(text) && (isAlnum(text[e]) || text[e] == '_' || text[e] == '@') {
			continue
		}
		local, domain := string(text[s:at]), string(text[at+1:e])
		if local[0] == '.' || local[len(local)-1] == '.' || strings.Contains(local, "..") || e-s > 254 {
			continue
		}
		labels := strings.Split(domain, ".")
		if len(labels) < 2 {
			continue
		}
		ok := true
		for _, l := range labels {
			if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
				ok = false
			}
		}
		tld := labels[len(labels)-1]
		if !ok || len(tld) < 2 || len(tld) > 24 || !isAlpha(tld) || notTLDs[strings.ToLower(tld)] {
			continue
		}
		emit(out, TypeEmail, s, e)
	}
}

func isAlpha(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// ---- US SSN ----

var (
	ssnRe      = regexp.MustCompile(`\d{3}([- ])\d{2}([- ])\d{4}`)
	ssnBareRe  = regexp.MustCompile(`\d{9}`)
	ssnContext = []string{"ssn", "social security", "soc sec", "taxpayer"}
)

func findSSNs(_ *Engine, st *scanText, out *[]Finding) {
	text := st.b
	findAllIn(ssnRe, text, st.digitWindows(), func(m []int) {
		s, e := m[0], m[1]
		if text[m[2]] == text[m[4]] && digitBounded(text, s, e) && groupBounded(text, s, e, text[m[2]]) && ssnValid(digitsOf(text[s:e])) {
			emit(out, TypeUSSSN, s, e)
		}
	})
	// Nine bare digits are an SSN only when the text says so nearby:
	// without context they are as likely an order or account number.
	findAllIn(ssnBareRe, text, st.digitWindows(), func(m []int) {
		s, e := m[0], m[1]
		if digitBounded(text, s, e) && hasContext(text, s, ssnContext) && ssnValid(digitsOf(text[s:e])) {
			emit(out, TypeUSSSN, s, e)
		}
	})
}

func ssnValid(d []byte) bool {
	if len(d) != 9 {
		return false
	}
	area := int(d[0])*100 + int(d[1])*10 + int(d[2])
	group := int(d[3])*10 + int(d[4])
	serial := int(d[5])*1000 + int(d[6])*100 + int(d[7])*10 + int(d[8])
	if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
		return false
	}
	same := true
	for _, c := range d {
		if c != d[0] {
			same = false
		}
	}
	s := make([]byte, len(d))
	for i, c := range d {
		s[i] = c + '0'
	}
	// Sequences and advertising numbers the SSA voided.
	switch string(s) {
	case "123456789", "078051120", "219099999":
		return false
	}
	return !same
}

// hasContext reports whether one of the words appears in the 40 bytes
// before s (case-insensitive).
func hasContext(text []byte, s int, words []string) bool {
	w := bytes.ToLower(text[max(0, s-40):s])
	for _, k := range words {
		if bytes.Contains(w, []byte(k)) {
			return true
		}
	}
	return false
}

// ---- JP My Number ----

var (
	myNumberGroupedRe = regexp.MustCompile(`\d{4}([- ])\d{4}([- ])\d{4}`)
	myNumberBareRe    = regexp.MustCompile(`\d{12}`)
	myNumberContext   = []string{"マイナンバー", "個人番号", "my number", "mynumber", "my_number", "individual number", "kojin"}
)

func findMyNumbers(_ *Engine, st *scanText, out *[]Finding) {
	text := st.b
	findAllIn(myNumberGroupedRe, text, st.digitWindows(), func(m []int) {
		s, e := m[0], m[1]
		if text[m[2]] == text[m[4]] && digitBounded(text, s, e) && groupBounded(text, s, e, text[m[2]]) && myNumberValid(digitsOf(text[s:e])) {
			emit(out, TypeJPMyNumber, s, e)
		}
	})
	// Bare 12 digits pass the check digit one time in ten by chance, so
	// they need context words.
	findAllIn(myNumberBareRe, text, st.digitWindows(), func(m []int) {
		s, e := m[0], m[1]
		if digitBounded(text, s, e) && hasContext(text, s, myNumberContext) && myNumberValid(digitsOf(text[s:e])) {
			emit(out, TypeJPMyNumber, s, e)
		}
	})
}

// myNumberValid checks the individual number's check digit (the 12th):
// weights 6,5,4,3,2,7,6,5,4,3,2 over digits 1..11, r = sum mod 11,
// check = 0 if r <= 1 else 11-r.
func myNumberValid(d []byte) bool {
	if len(d) != 12 {
		return false
	}
	weights := [11]int{6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2}
	sum := 0
	for i, w := range weights {
		sum += int(d[i]) * w
	}
	check := 0
	if r := sum % 11; r > 1 {
		check = 11 - r
	}
	return int(d[11]) == check
}

// ---- phone numbers ----

// phoneRe finds candidates: international (+CC ...) or national numbers
// written with separators. Bare digit runs are not phone numbers here
// (they are ids, timestamps and amounts far more often).
var phoneRe = regexp.MustCompile(`(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,8}(?:[ .-]\d{1,8}){1,5}|\+\d{7,15}`)

var (
	dateLikeRe = regexp.MustCompile(`^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$`)
	ipLikeRe   = regexp.MustCompile(`^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$`)
)

func findPhones(e *Engine, st *scanText, out *[]Finding) {
	text := st.b
	findAllIn(phoneRe, text, st.digitWindows(), func(m []int) {
		s, end := m[0], m[1]
		if s > 0 && (isAlnum(text[s-1]) || strings.IndexByte("_+-./#$€", text[s-1]) >= 0) {
			return // glued to a word, an id ("PO#2025-103347"), an amount
		}
		if inIBANGroups(text, s) {
			return // the tail of an IBAN written in groups of four
		}
		if end < len(text) && (isAlnum(text[end]) || text[end] == '_' || (text[end] == '-' || text[end] == '.' || text[end] == '/') && end+1 < len(text) && isDigit(text[end+1])) {
			return
		}
		// A neighbouring token with digits joined by one space means the
		// candidate is a piece of something longer (an IBAN, a card).
		if s > 1 && text[s-1] == ' ' && tokenHasDigit(text, s-2, -1) || end+1 < len(text) && text[end] == ' ' && tokenHasDigit(text, end+1, 1) {
			return
		}
		c := text[s:end]
		n := len(digitsOf(c))
		if n < 7 || n > 15 || dateLikeRe.Match(c) || ipLikeRe.Match(c) {
			return
		}
		if c[0] != '+' && !bytes.ContainsAny(c, " .-(") {
			return
		}
		num, err := phonenumbers.Parse(string(c), e.phoneRegion)
		if err != nil || !phonenumbers.IsValidNumber(num) {
			return
		}
		// Without a '+' the number must be one of the default region's own
		// (not, say, "0116-4822-1105" read as US-dialled 011 64 ...).
		if c[0] != '+' && (!phonenumbers.IsValidNumberForRegion(num, e.phoneRegion) || !nationalGrouping(c, num)) {
			return
		}
		emit(out, TypePhone, s, end)
	})
}

// nationalGrouping reports whether a number written without a country code
// groups its digits the way the region writes them ("(415) 555-2671",
// "415.555.2671", with or without the trunk prefix "1"), not as another
// number's grouping would ("1182 0328 6708").
func nationalGrouping(c []byte, num *phonenumbers.PhoneNumber) bool {
	groups := func(b []byte) []string {
		return strings.FieldsFunc(string(b), func(r rune) bool { return r < '0' || r > '9' })
	}
	got := groups(c)
	want := groups([]byte(phonenumbers.Format(num, phonenumbers.NATIONAL)))
	if len(got) == len(want)+1 && len(got[0]) == 1 {
		got = got[1:] // trunk prefix written as its own group
	}
	return slices.Equal(got, want)
}

// inIBANGroups reports whether text[s:] follows "CCdd XXXX XXXX ...", the
// printed IBAN grouping, so a number there is not read as a phone.
func inIBANGroups(text []byte, s int) bool {
	i := s
	for i >= 5 && text[i-1] == ' ' {
		g := text[i-5 : i-1]
		if !isUpperAlnum(g) {
			return false
		}
		if 'A' <= g[0] && g[0] <= 'Z' && 'A' <= g[1] && g[1] <= 'Z' && isDigit(g[2]) && isDigit(g[3]) && (i-5 == 0 || !isAlnum(text[i-6])) {
			return true
		}
		i -= 5
	}
	return false
}

func isUpperAlnum(b []byte) bool {
	for _, c := range b {
		if !isDigit(c) && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}

// tokenHasDigit reports whether the whitespace-free token around text[i]
// (walking in direction dir) contains a digit.
func tokenHasDigit(text []byte, i, dir int) bool {
	for ; i >= 0 && i < len(text) && text[i] != ' ' && text[i] != '\n' && text[i] != '\t'; i += dir {
		if isDigit(text[i]) {
			return true
		}
	}
	return false
}

// ---- JWT ----

var jwtRe = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*`)

func findJWTs(_ *Engine, st *scanText, out *[]Finding) {
	text := st.b
	for _, m := range jwtRe.FindAllIndex(text, -1) {
		s, e := m[0], m[1]
		if s > 0 && (isAlnum(text[s-1]) || text[s-1] == '_' || text[s-1] == '-') {
			continue
		}
		parts := bytes.SplitN(text[s:e], []byte("."), 3)
		var hdr struct {
			Alg *string `json:"alg"`
		}
		h, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(string(parts[0]), "="))
		if err != nil || json.Unmarshal(h, &hdr) != nil || hdr.Alg == nil {
			continue
		}
		p, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(string(parts[1]), "="))
		if err != nil || !json.Valid(p) {
			continue
		}
		if *hdr.Alg != "none" && len(parts[2]) < 16 {
			continue // a signed token carries a real signature
		}
		emit(out, TypeJWT, s, e)
	}
}

// ---- PEM private keys ----

// maxPEMBody is more than an 8192-bit RSA key's PEM body (~6.4 KiB).
const maxPEMBody = 16 << 10

var pemBeginRe = regexp.MustCompile(`-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----`)

func findPrivateKeys(_ *Engine, st *scanText, out *[]Finding) {
	text := st.b
	for _, m := range pemBeginRe.FindAllSubmatchIndex(text, -1) {
		s, bodyStart := m[0], m[1]
		endMarker := "-----END " + string(text[m[2]:m[3]]) + "-----"
		// Look for the end within maxPEMBody bytes only, so a text of
		// BEGIN markers costs linear time.
		i := bytes.Index(text[bodyStart:min(len(text), bodyStart+maxPEMBody)], []byte(endMarker))
		var e int
		body := 0
		if i >= 0 {
			e = bodyStart + i + len(endMarker)
			body = countB64(text[bodyStart : bodyStart+i])
		} else {
			// Truncated key (the scan window cut it, or it was pasted
			// partially): the span runs to the end of the key material.
			e = bodyStart
			for e < len(text) && e-bodyStart < maxPEMBody && (isB64(text[e]) || text[e] == '\n' || text[e] == '\r' || text[e] == ' ' || text[e] == '\\' && e+1 < len(text) && (text[e+1] == 'n' || text[e+1] == 'r')) {
				if text[e] == '\\' {
					e++
				}
				e++
			}
			body = countB64(text[bodyStart:e])
		}
		if body >= 32 { // "-----BEGIN PRIVATE KEY-----" alone in docs is not a key
			emit(out, TypePrivateKey, s, e)
		}
	}
}

func isB64(c byte) bool { return isAlnum(c) || c == '+' || c == '/' || c == '=' }

func countB64(b []byte) int {
	n := 0
	for _, c := range b {
		if isB64(c) {
			n++
		}
	}
	return n
}
