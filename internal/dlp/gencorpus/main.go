// Command gencorpus writes the labelled DLP corpus internal/dlp/testdata/corpus.jsonl
// (fixed seed, so the output is reproducible):
//
//	go run ./internal/dlp/gencorpus -gitleaks "$(go mod download -json github.com/zricethezav/gitleaks/v8@v8.30.1 | jq -r .Dir)"
//
// Records: gitleaks' per-rule true/false positive examples (read from its
// cmd/generate/config/rules/*.go with go/ast; the samples it builds from
// regexes are generated here from the same regexes), generated PII with valid
// and invalid check digits in prose, JSON, form and YAML contexts, and hard
// negatives (UUIDs, hashes, timestamps, order numbers, Luhn-failing digits,
// base64 noise, IPs, versions, dates). Labels are computed here, independently
// of the engine; only phone validity uses the same library (nyaruka/phonenumbers).
package main

import (
	"bufio"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"

	"github.com/nyaruka/phonenumbers"
)

// Label marks the span of one planted value.
type Label struct {
	Type  string `json:"type"`
	Start int    `json:"start"`
	End   int    `json:"end"`
}

// Record is one corpus line.
type Record struct {
	Source string  `json:"source"`         // "pii", "pii-invalid", "negative", "gitleaks-tp", "gitleaks-fp"
	Kind   string  `json:"kind"`           // value kind, e.g. "card", "uuid"; the gitleaks rule id for gitleaks records
	Text   string  `json:"text"`           // the text to scan
	Labels []Label `json:"labels"`         // planted PII spans (empty for negatives)
	Rule   string  `json:"rule,omitempty"` // gitleaks records: the rule the example is for
}

func main() {
	out := flag.String("out", "internal/dlp/testdata/corpus.jsonl", "output file")
	seed := flag.Uint64("seed", 12, "random seed")
	n := flag.Int("n", 300, "records per PII type and validity")
	gl := flag.String("gitleaks", "", "gitleaks v8.30.1 module directory (its rule examples); empty: leave them out")
	flag.Parse()
	g := &gen{r: rand.New(rand.NewPCG(*seed, *seed^0x9e3779b97f4a7c15))}
	var recs []Record
	recs = append(recs, g.pii(*n)...)
	recs = append(recs, g.negatives(*n)...)
	if *gl != "" {
		glRecs, skipped, err := gitleaksExamples(g, *gl)
		if err != nil {
			fmt.Fprintln(os.Stderr, "gencorpus:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "gencorpus: %d gitleaks examples, %d expressions not evaluated\n", len(glRecs), skipped)
		recs = append(recs, glRecs...)
	}
	f, err := os.Create(*out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gencorpus:", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, r := range recs {
		if r.Labels == nil {
			r.Labels = []Label{}
		}
		if err := enc.Encode(r); err != nil {
			fmt.Fprintln(os.Stderr, "gencorpus:", err)
			os.Exit(1)
		}
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "gencorpus:", err)
		os.Exit(1)
	}
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "gencorpus:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "gencorpus: wrote %d records to %s\n", len(recs), *out)
}

type gen struct{ r *rand.Rand }

func (g *gen) digits(n int) []int {
	d := make([]int, n)
	for i := range d {
		d[i] = g.r.IntN(10)
	}
	return d
}

func (g *gen) pick(xs []string) string { return xs[g.r.IntN(len(xs))] }

func str(d []int) string {
	var b strings.Builder
	for _, x := range d {
		b.WriteByte(byte('0' + x))
	}
	return b.String()
}

// group joins s in groups of the given sizes with sep.
func group(s string, sizes []int, sep string) string {
	var parts []string
	for _, n := range sizes {
		if n >= len(s) {
			parts = append(parts, s)
			s = ""
			break
		}
		parts = append(parts, s[:n])
		s = s[n:]
	}
	if s != "" {
		parts = append(parts, s)
	}
	return strings.Join(parts, sep)
}

// contexts place a value in text; form-encoded values are percent-encoded,
// and the label spans the encoded token.
var contexts = []struct {
	name   string
	before string
	after  string
	encode func(string) string
}{
	{"prose", "Please note that the value %s was shared by the customer yesterday.", "", nil},
	{"json", `{"id": 1842, "customer": {"value": "%s", "active": true}}`, "", nil},
	{"form", "ref=A17&value=%s&submit=1", "", url.QueryEscape},
	{"yaml", "customer:\n  name: Jane\n  value: %s\n  note: ok\n", "", nil},
	{"csv", "1842,Jane Doe,%s,2024-05-01\n", "", nil},
	{"json-escaped", `{"note":"%s","ts":"2024-05-01T10:00:00Z"}`, "", jsonEscapeAll},
	{"base64", "payload %s end", "", func(v string) string { return base64.StdEncoding.EncodeToString([]byte("value: " + v + " (customer)")) }},
	{"with-distractors", "order #2024-118812 at 2024-05-01T10:00:00Z, trace 7f9c2ba4-e88f-11ee-8c90-0242ac120002, value %s, total $1,240.50", "", nil},
}

// jsonEscapeAll writes non-alphanumerics as \u escapes, as some encoders do.
func jsonEscapeAll(v string) string {
	var b strings.Builder
	for _, c := range v {
		if c < 0x80 && (c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			b.WriteRune(c)
		} else if c < 0x10000 {
			fmt.Fprintf(&b, "\\u%04x", c)
		} else {
			b.WriteRune(c)
		}
	}
	return b.String()
}

// place renders value in a random context and labels it.
func (g *gen) place(typ, value string, label bool, extraBefore string) (string, []Label) {
	c := contexts[g.r.IntN(len(contexts))]
	v := value
	if c.encode != nil {
		// Context words travel inside the encoding, as they would in a real body.
		v = c.encode(extraBefore + value)
		extraBefore = ""
	}
	tmpl := c.before
	i := strings.Index(tmpl, "%s")
	pre := tmpl[:i] + extraBefore
	text := pre + v + tmpl[i+2:]
	if !label {
		return text, nil
	}
	return text, []Label{{Type: typ, Start: len(pre), End: len(pre) + len(v)}}
}

// ---- value generators: valid and invalid ----

func luhnDigit(d []int) int {
	sum := 0
	for i := range d { // d without its check digit: double every second from the right
		v := d[len(d)-1-i]
		if i%2 == 0 {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
	}
	return (10 - sum%10) % 10
}

func (g *gen) card(valid bool) string {
	issuers := []struct {
		prefix string
		length int
		groups []int
	}{
		{"4", 16, []int{4, 4, 4, 4}}, {"4", 13, []int{4, 4, 5}}, {"51", 16, []int{4, 4, 4, 4}}, {"55", 16, []int{4, 4, 4, 4}},
		{"2221", 16, []int{4, 4, 4, 4}}, {"2720", 16, []int{4, 4, 4, 4}}, {"34", 15, []int{4, 6, 5}}, {"37", 15, []int{4, 6, 5}},
		{"6011", 16, []int{4, 4, 4, 4}}, {"65", 16, []int{4, 4, 4, 4}}, {"3530", 16, []int{4, 4, 4, 4}}, {"62", 16, []int{4, 4, 4, 4}},
		{"36", 14, []int{4, 6, 4}},
	}
	is := issuers[g.r.IntN(len(issuers))]
	d := make([]int, 0, is.length)
	for _, c := range is.prefix {
		d = append(d, int(c-'0'))
	}
	d = append(d, g.digits(is.length-len(d)-1)...)
	check := luhnDigit(d)
	if !valid {
		check = (check + 1 + g.r.IntN(9)) % 10
	}
	s := str(append(d, check))
	switch g.r.IntN(3) {
	case 0:
		return s
	case 1:
		return group(s, is.groups, " ")
	}
	return group(s, is.groups, "-")
}

var ibanCountries = []struct {
	cc     string
	length int
	letter int // leading letters in the BBAN (bank code)
}{
	{"DE", 22, 0}, {"FR", 27, 0}, {"ES", 24, 0}, {"IT", 27, 1}, {"NL", 18, 4}, {"GB", 22, 4}, {"BE", 16, 0},
	{"CH", 21, 0}, {"AT", 20, 0}, {"PL", 28, 0}, {"SE", 24, 0}, {"NO", 15, 0}, {"PT", 25, 0}, {"IE", 22, 4},
}

func mod97(s string) int {
	r := 0
	for _, c := range s {
		if c >= 'A' && c <= 'Z' {
			v := int(c-'A') + 10
			r = (r*100 + v) % 97
		} else {
			r = (r*10 + int(c-'0')) % 97
		}
	}
	return r
}

func (g *gen) iban(valid bool) string {
	c := ibanCountries[g.r.IntN(len(ibanCountries))]
	var b strings.Builder
	for range c.letter {
		b.WriteByte(byte('A' + g.r.IntN(26)))
	}
	b.WriteString(str(g.digits(c.length - 4 - c.letter)))
	bban := b.String()
	check := 98 - mod97(bban+c.cc+"00")
	if !valid {
		check = (check + 1 + g.r.IntN(90)) % 97
		if check < 2 {
			check += 2
		}
		if 98-mod97(bban+c.cc+"00") == check {
			check = (check+1)%96 + 2
		}
	}
	s := fmt.Sprintf("%s%02d%s", c.cc, check, bban)
	if g.r.IntN(2) == 0 {
		return group(s, []int{4, 4, 4, 4, 4, 4, 4, 4}, " ")
	}
	return s
}

var (
	firstNames = []string{"anna", "bob", "carlos", "dana", "erik", "fatima", "george", "hana", "ivan", "julia", "kenji", "lena", "mo", "nina", "oskar", "priya"}
	lastNames  = []string{"smith", "muller", "garcia", "tanaka", "kowalski", "rossi", "nguyen", "okafor", "jensen", "silva"}
	domains    = []string{"gmail.com", "example.org", "mail.acme-corp.com", "uni-heidelberg.de", "company.co.uk", "startup.io", "posteo.net", "yahoo.co.jp"}
)

func (g *gen) email() string {
	local := g.pick(firstNames)
	switch g.r.IntN(4) {
	case 0:
		local += "." + g.pick(lastNames)
	case 1:
		local += fmt.Sprint(g.r.IntN(1000))
	case 2:
		local += "+" + g.pick([]string{"news", "work", "git"})
	}
	return local + "@" + g.pick(domains)
}

// notEmail: strings with an @ that are not addresses.
func (g *gen) notEmail() string {
	return g.pick([]string{
		"logo@2x.png", "icon-" + fmt.Sprint(g.r.IntN(99)) + "@3x.webp", "user@localhost", "@" + g.pick(firstNames) + " said hi",
		"npm i lodash@4.17." + fmt.Sprint(g.r.IntN(30)), "go get golang.org/x/net@v0." + fmt.Sprint(g.r.IntN(40)) + ".0",
		g.pick(firstNames) + "..x@" + g.pick(domains), "name@-bad-.com", "ssh " + g.pick(firstNames) + "@10.0.0." + fmt.Sprint(g.r.IntN(250)),
	})
}

var phoneRegions = []string{"US", "US", "US", "GB", "DE", "FR", "JP", "IN", "BR", "AU", "ES", "IT"}

func (g *gen) phone(valid bool) (string, bool) {
	region := g.pick(phoneRegions)
	ex := phonenumbers.GetExampleNumberForType(region, phonenumbers.MOBILE)
	if g.r.IntN(2) == 0 {
		ex = phonenumbers.GetExampleNumberForType(region, phonenumbers.FIXED_LINE)
	}
	if ex == nil {
		return "", false
	}
	for range 50 {
		nat := fmt.Sprint(ex.GetNationalNumber())
		// Vary the subscriber digits (the last four), keep the prefix.
		v := nat[:len(nat)-4] + str(g.digits(4))
		if !valid {
			switch g.r.IntN(2) {
			case 0:
				v = v[:len(v)-3] // too short
			default:
				v = "0" + v[1:] // a leading 0 after the country code is never valid here
			}
		}
		num, err := phonenumbers.Parse("+"+fmt.Sprint(ex.GetCountryCode())+v, "")
		if err != nil || phonenumbers.IsValidNumber(num) != valid {
			continue
		}
		if !valid {
			return "+" + fmt.Sprint(ex.GetCountryCode()) + " " + group(v, []int{3, 3, 4}, " "), true
		}
		if region == "US" && g.r.IntN(2) == 0 {
			return phonenumbers.Format(num, phonenumbers.NATIONAL), true
		}
		return phonenumbers.Format(num, phonenumbers.INTERNATIONAL), true
	}
	return "", false
}

func (g *gen) ssn(valid bool) (string, string) {
	area := 1 + g.r.IntN(899)
	for area == 666 {
		area = 1 + g.r.IntN(899)
	}
	grp, serial := 1+g.r.IntN(99), 1+g.r.IntN(9999)
	if !valid {
		switch g.r.IntN(4) {
		case 0:
			area = 0
		case 1:
			area = 666
		case 2:
			area = 900 + g.r.IntN(100)
		case 3:
			grp = 0
		}
		if g.r.IntN(4) == 0 {
			serial = 0
		}
	}
	s := fmt.Sprintf("%03d%02d%04d", area, grp, serial)
	switch g.r.IntN(3) {
	case 0:
		return s, "SSN: "
	case 1:
		return s[:3] + " " + s[3:5] + " " + s[5:], ""
	}
	return s[:3] + "-" + s[3:5] + "-" + s[5:], ""
}

func myNumberCheck(d []int) int {
	w := []int{6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2}
	sum := 0
	for i := range w {
		sum += d[i] * w[i]
	}
	if r := sum % 11; r > 1 {
		return 11 - r
	}
	return 0
}

func (g *gen) myNumber(valid bool) (string, string) {
	d := g.digits(11)
	check := myNumberCheck(d)
	if !valid {
		check = (check + 1 + g.r.IntN(9)) % 10
	}
	s := str(append(d, check))
	switch g.r.IntN(3) {
	case 0:
		return s, g.pick([]string{"マイナンバー: ", "個人番号 ", "my number: "})
	case 1:
		return group(s, []int{4, 4, 4}, " "), ""
	}
	return group(s, []int{4, 4, 4}, "-"), ""
}

func (g *gen) b64url(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.r.Uint32())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func (g *gen) jwt(valid bool) string {
	alg := g.pick([]string{"HS256", "RS256", "ES256"})
	hdr := `{"alg":"` + alg + `","typ":"JWT"}`
	if !valid {
		hdr = `{"typ":"JWT","kid":"` + g.hex(4) + `"}` // no alg: not a JWS header
	}
	payload := fmt.Sprintf(`{"sub":"%d","name":"%s","iat":%d}`, g.r.IntN(100000), g.pick(firstNames), 1700000000+g.r.IntN(1e8))
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(hdr)) + "." + enc([]byte(payload)) + "." + g.b64url(32)
}

func (g *gen) pem(valid bool) string {
	kind := g.pick([]string{"RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY"})
	if !valid {
		kind = g.pick([]string{"PUBLIC KEY", "CERTIFICATE", "CERTIFICATE REQUEST", "RSA PUBLIC KEY"})
	}
	b := make([]byte, 48*(3+g.r.IntN(10)))
	for i := range b {
		b[i] = byte(g.r.Uint32())
	}
	body := base64.StdEncoding.EncodeToString(b)
	var lines []string
	for len(body) > 64 {
		lines = append(lines, body[:64])
		body = body[64:]
	}
	lines = append(lines, body)
	return "-----BEGIN " + kind + "-----\n" + strings.Join(lines, "\n") + "\n-----END " + kind + "-----"
}

func (g *gen) pii(n int) []Record {
	var recs []Record
	add := func(source, typ, value, extra string, label bool) {
		text, labels := g.place(typ, value, label, extra)
		recs = append(recs, Record{Source: source, Kind: typ, Text: text, Labels: labels})
	}
	for range n {
		add("pii", "card", g.card(true), "", true)
		add("pii-invalid", "card", g.card(false), "", false)
		add("pii", "iban", g.iban(true), "", true)
		add("pii-invalid", "iban", g.iban(false), "", false)
		add("pii", "email", g.email(), "", true)
		add("pii-invalid", "email", g.notEmail(), "", false)
		if p, ok := g.phone(true); ok {
			add("pii", "phone", p, "", true)
		}
		if p, ok := g.phone(false); ok {
			add("pii-invalid", "phone", p, "", false)
		}
		s, ctx := g.ssn(true)
		add("pii", "us_ssn", s, ctx, true)
		s, ctx = g.ssn(false)
		add("pii-invalid", "us_ssn", s, ctx, false)
		s, ctx = g.myNumber(true)
		add("pii", "jp_mynumber", s, ctx, true)
		s, ctx = g.myNumber(false)
		add("pii-invalid", "jp_mynumber", s, ctx, false)
		add("pii", "jwt", g.jwt(true), "", true)
		add("pii-invalid", "jwt", g.jwt(false), "", false)
		add("pii", "private_key", g.pem(true), "", true)
		add("pii-invalid", "private_key", g.pem(false), "", false)
	}
	return recs
}

// ---- hard negatives ----

func (g *gen) hex(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.r.Uint32())
	}
	return hex.EncodeToString(b)
}

func (g *gen) negatives(n int) []Record {
	kinds := []struct {
		kind string
		make func() string
	}{
		{"uuid", func() string {
			h := g.hex(16)
			return h[:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:]
		}},
		{"md5", func() string { return g.hex(16) }},
		{"sha1", func() string { return g.hex(20) }},
		{"sha256", func() string { return g.hex(32) }},
		{"unix-seconds", func() string { return fmt.Sprint(1600000000 + g.r.IntN(200000000)) }},
		{"unix-millis", func() string { return fmt.Sprint(1600000000000 + g.r.Int64N(200000000000)) }},
		{"rfc3339", func() string {
			return fmt.Sprintf("2024-%02d-%02dT%02d:%02d:%02d.%03dZ", 1+g.r.IntN(12), 1+g.r.IntN(28), g.r.IntN(24), g.r.IntN(60), g.r.IntN(60), g.r.IntN(1000))
		}},
		{"date", func() string { return fmt.Sprintf("2025-%02d-%02d", 1+g.r.IntN(12), 1+g.r.IntN(28)) }},
		{"order-number", func() string {
			return g.pick([]string{"ORD-", "INV-", "PO#", "#"}) + fmt.Sprintf("%d-%06d", 2020+g.r.IntN(6), g.r.IntN(1000000))
		}},
		{"order-digits", func() string { return str(g.digits(8 + g.r.IntN(5))) }},
		{"luhn-failing-16", func() string {
			d := append([]int{4}, g.digits(14)...)
			return group(str(append(d, (luhnDigit(d)+1+g.r.IntN(9))%10)), []int{4, 4, 4, 4}, g.pick([]string{"", " ", "-"}))
		}},
		{"base64-noise", func() string {
			b := make([]byte, 24+g.r.IntN(96))
			for i := range b {
				b[i] = byte(g.r.Uint32())
			}
			return base64.StdEncoding.EncodeToString(b)
		}},
		{"ipv4", func() string {
			return fmt.Sprintf("%d.%d.%d.%d", 1+g.r.IntN(223), g.r.IntN(256), g.r.IntN(256), 1+g.r.IntN(254))
		}},
		{"version", func() string { return fmt.Sprintf("v%d.%d.%d", g.r.IntN(5), g.r.IntN(40), g.r.IntN(30)) }},
		{"price", func() string { return fmt.Sprintf("$%d,%03d.%02d", 1+g.r.IntN(999), g.r.IntN(1000), g.r.IntN(100)) }},
		{"tracking", func() string { return "1Z" + strings.ToUpper(g.hex(8)) }},
		{"iso-country-code-word", func() string { return g.pick([]string{"DE12 apples", "GB99 is a code", "FR75 Paris"}) }},
	}
	var recs []Record
	for _, k := range kinds {
		for range n / 3 {
			text, _ := g.place("", k.make(), false, "")
			recs = append(recs, Record{Source: "negative", Kind: k.kind, Text: text})
		}
	}
	return recs
}
