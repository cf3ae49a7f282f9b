package dlp

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp/syntax"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox/internal/errdefs"
)

var (
	engineOnce sync.Once
	engine     *Engine
	engineErr  error
)

// testEngine is shared: compiling ~225 rules takes tens of milliseconds.
func testEngine(t testing.TB) *Engine {
	t.Helper()
	engineOnce.Do(func() { engine, engineErr = New(Config{}) })
	if engineErr != nil {
		t.Fatal(engineErr)
	}
	return engine
}

// types returns "type@value" for each finding, to compare tables readably.
func types(text string, fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Type+"@"+text[f.Start:f.End])
	}
	return out
}

func TestDetectorsFindValidatedValues(t *testing.T) {
	e := testEngine(t)
	cases := []struct {
		name, text string
		want       []string
	}{
		{"visa with spaces", "pay 4111 1111 1111 1111 now", []string{"card@4111 1111 1111 1111"}},
		{"amex with dashes", "amex 3782-822463-10005.", []string{"card@3782-822463-10005"}},
		{"mastercard 2-series bare", "mc 2223000048400011", []string{"card@2223000048400011"}},
		{"card failing luhn", "pay 4111 1111 1111 1112 now", nil},
		{"luhn-valid but no issuer", "id 9999999999999995", nil},
		{"card with mixed separators", "4111-1111 1111-1111", nil},
		{"card inside a longer digit run", "n 411111111111111100", nil},
		{"iban printed", "IBAN: DE89 3704 0044 0532 0130 00.", []string{"iban@DE89 3704 0044 0532 0130 00"}},
		{"iban electronic then word", "GB82WEST12345698765432 EUR", []string{"iban@GB82WEST12345698765432"}},
		{"iban bad check digits", "DE88 3704 0044 0532 0130 00", nil},
		{"iban wrong length for country", "DE89370400440532013", nil},
		{"email", "mail bob.smith+x@mail.example.co.uk!", []string{"email@bob.smith+x@mail.example.co.uk"}},
		{"retina asset is not email", "logo@2x.png", nil},
		{"email with double dot", "a..b@example.com", nil},
		{"phone international", "call +44 20 7946 0958 today", []string{"phone@+44 20 7946 0958"}},
		{"phone us national", "call (415) 555-2671", []string{"phone@(415) 555-2671"}},
		{"date is not phone", "on 2024-01-15 at", nil},
		{"ip is not phone", "host 192.168.100.200 up", nil},
		{"bare digits are not phone", "order 4155552671", nil},
		{"invalid phone", "call +1 099 555 0100", nil},
		{"ssn dashed", "ssn 536-22-1234", []string{"us_ssn@536-22-1234"}},
		{"ssn area 666", "666-22-1234", nil},
		{"ssn area 9xx", "912-22-1234", nil},
		{"ssn group 00", "536-00-1234", nil},
		{"ssn serial 0000", "536-22-0000", nil},
		{"ssn mixed separators", "536-22 1234", nil},
		{"ssn bare with context", "SSN: 536221234", []string{"us_ssn@536221234"}},
		{"ssn bare without context", "order 536221234", nil},
		{"my number grouped", "1234 5678 9018", []string{"jp_mynumber@1234 5678 9018"}},
		{"my number bare with context", "マイナンバー: 123456789018", []string{"jp_mynumber@123456789018"}},
		{"my number bad check digit", "1234 5678 9017", nil},
		{"my number bare without context", "ref 123456789018", nil},
		{"jwt", `t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U`, []string{"jwt@eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"}},
		{"jwt-shaped without alg", `eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U`, nil},
		{"aws access key id", "AKIAZ52HGXYRN4WBTEST", []string{"secret@AKIAZ52HGXYRN4WBTEST"}},
		{"aws documentation key is allowlisted", "AKIAIOSFODNN7EXAMPLE", nil},
		{"github token", `token = "ghp_0123456789abcdefABCDEF0123456789abcd"`, []string{"secret@ghp_0123456789abcdefABCDEF0123456789abcd"}},
		{"aws secret access key", "aws_secret_access_key = h3Jk9sP2qL8vN5xR7tY1wZ4mB6cD0fG2hJ4kL6nP\n", []string{"secret@h3Jk9sP2qL8vN5xR7tY1wZ4mB6cD0fG2hJ4kL6nP"}},
		{"azure storage account key", "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=gtD7fGUOv8fwNfBb0jXxUJR4QQAAabVVloZaXZxmCu1VShIqmArIntn9oX98WHgCtzC1uwB5FXZPf7stg7NvlE==;EndpointSuffix=core.windows.net", []string{"secret@gtD7fGUOv8fwNfBb0jXxUJR4QQAAabVVloZaXZxmCu1VShIqmArIntn9oX98WHgCtzC1uwB5FXZPf7stg7NvlE=="}},
		{"gcp service account key id", `{"type": "service_account", "private_key_id": "d26ab4a829a95249f512c17b8ed411fa644d35db"}`, []string{"secret@d26ab4a829a95249f512c17b8ed411fa644d35db"}},
		{"uuid", "id 123e4567-e89b-12d3-a456-426614174000", nil},
		{"sha256", "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := types(c.text, e.Scan([]byte(c.text)))
			if !slices.Equal(got, c.want) {
				t.Errorf("Scan(%q) = %q, want %q", c.text, got, c.want)
			}
		})
	}
}

func TestPrivateKeyDetector(t *testing.T) {
	e := testEngine(t)
	body := strings.Repeat("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", 3)
	pem := "-----BEGIN RSA PRIVATE KEY-----\n" + body + "\n-----END RSA PRIVATE KEY-----"
	cases := []struct {
		name, text string
		want       int // findings of type private_key
		whole      bool
	}{
		{"complete block", "key:\n" + pem + "\n", 1, true},
		{"truncated block", "-----BEGIN PRIVATE KEY-----\n" + body, 1, false},
		{"marker alone in docs", "a line -----BEGIN PRIVATE KEY----- and more prose", 0, false},
		{"inside a json string with escaped newlines", `{"private_key": "` + strings.ReplaceAll(pem, "\n", `\n`) + `"}`, 1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := 0
			for _, f := range e.Scan([]byte(c.text)) {
				if f.Type == TypePrivateKey {
					n++
					if c.whole && c.text[f.Start:f.End] != pem {
						t.Errorf("span %q, want the whole block", c.text[f.Start:f.End])
					}
				}
			}
			if n != c.want {
				t.Errorf("%d private_key findings, want %d", n, c.want)
			}
		})
	}
}

func TestScanDecodesEncodedTokens(t *testing.T) {
	e := testEngine(t)
	card := "4111 1111 1111 1111"
	cases := []struct {
		name, text, token string
	}{
		{"json unicode escape", `{"n":"` + strings.ReplaceAll(card, " ", `\u0020`) + `"}`, strings.ReplaceAll(card, " ", `\u0020`)},
		{"percent in query", "q=" + url.QueryEscape("card "+card) + "&x=1", url.QueryEscape("card " + card)},
		{"plus-encoded form", "a=1&cc=" + strings.ReplaceAll(card, " ", "+"), strings.ReplaceAll(card, " ", "+")},
		{"base64", "data " + base64.StdEncoding.EncodeToString([]byte("my card is "+card+" ok")) + " end", base64.StdEncoding.EncodeToString([]byte("my card is " + card + " ok"))},
		{"base64 inside json escapes", `{"b":"` + strings.ReplaceAll(base64.StdEncoding.EncodeToString([]byte("card "+card)), "/", `\/`) + `"}`, strings.ReplaceAll(base64.StdEncoding.EncodeToString([]byte("card "+card)), "/", `\/`)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := e.Scan([]byte(c.text))
			var got []string
			for _, f := range fs {
				got = append(got, f.Type+"@"+c.text[f.Start:f.End])
			}
			if !slices.Contains(got, "card@"+c.token) {
				t.Fatalf("findings %q, want card over the encoded token %q", got, c.token)
			}
			red := string(Redact([]byte(c.text), fs))
			if strings.Contains(red, c.token) || !strings.Contains(red, "[REDACTED:card]") {
				t.Errorf("Redact = %q", red)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	cases := []struct {
		name, text string
		fs         []Finding
		want       string
	}{
		{"one span", "a 1234 b", []Finding{{Type: "card", Start: 2, End: 6}}, "a [REDACTED:card] b"},
		{"two spans", "x1y2z", []Finding{{Type: "a", Start: 1, End: 2}, {Type: "b", Start: 3, End: 4}}, "x[REDACTED:a]y[REDACTED:b]z"},
		{"overlap merges to the earliest type", "abcdef", []Finding{{Type: "b", Start: 2, End: 5}, {Type: "a", Start: 1, End: 3}}, "a[REDACTED:a]f"},
		{"out-of-range spans are clipped", "abc", []Finding{{Type: "x", Start: -3, End: 1}, {Type: "y", Start: 2, End: 99}}, "[REDACTED:x]b[REDACTED:y]"},
		{"empty and inverted spans ignored", "abc", []Finding{{Type: "x", Start: 1, End: 1}, {Type: "y", Start: 2, End: 1}}, "abc"},
		{"no findings copies", "abc", nil, "abc"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := string(Redact([]byte(c.text), c.fs)); got != c.want {
				t.Errorf("Redact = %q, want %q", got, c.want)
			}
		})
	}
}

func TestResolveDropsNestedDuplicates(t *testing.T) {
	cases := []struct {
		name string
		in   []Finding
		want []Finding
	}{
		{"gitleaks jwt inside ours", []Finding{{Type: "secret", Rule: "jwt", Start: 0, End: 10}, {Type: "jwt", Rule: "jwt", Start: 0, End: 10}}, []Finding{{Type: "jwt", Rule: "jwt", Start: 0, End: 10}}},
		{"specific rule inside generic is kept", []Finding{{Type: "secret", Rule: "generic-api-key", Start: 0, End: 20}, {Type: "secret", Rule: "github-pat", Start: 2, End: 18}}, []Finding{{Type: "secret", Rule: "generic-api-key", Start: 0, End: 20}, {Type: "secret", Rule: "github-pat", Start: 2, End: 18}}},
		{"generic inside specific is dropped", []Finding{{Type: "secret", Rule: "github-pat", Start: 0, End: 20}, {Type: "secret", Rule: "generic-api-key", Start: 2, End: 18}}, []Finding{{Type: "secret", Rule: "github-pat", Start: 0, End: 20}}},
		{"partial overlap keeps both", []Finding{{Type: "card", Rule: "card", Start: 0, End: 10}, {Type: "phone", Rule: "phone", Start: 5, End: 15}}, []Finding{{Type: "card", Rule: "card", Start: 0, End: 10}, {Type: "phone", Rule: "phone", Start: 5, End: 15}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := resolve(slices.Clone(c.in)); !slices.Equal(got, c.want) {
				t.Errorf("resolve = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestConfigDisableAndLiterals(t *testing.T) {
	text := []byte("mail bob@example.com key sk-live-TOPSECRET-123 and c2stbGl2ZS1UT1BTRUNSRVQtMTIz")
	e, err := New(Config{Disable: []string{"email"}, NoBuiltinRules: true})
	if err != nil {
		t.Fatal(err)
	}
	if fs := e.Scan(text); len(fs) != 0 {
		t.Fatalf("email disabled, no rules: got %+v", fs)
	}
	le := e.WithLiterals([]Literal{{Rule: "secret:api.example.com", Value: "sk-live-TOPSECRET-123"}, {Rule: "short", Value: "abc"}})
	got := types(string(text), le.Scan(text))
	want := []string{"literal@sk-live-TOPSECRET-123", "literal@c2stbGl2ZS1UT1BTRUNSRVQtMTIz"}
	if !slices.Equal(got, want) {
		t.Errorf("with literals: %q, want %q", got, want)
	}
	if fs := e.Scan(text); len(fs) != 0 {
		t.Errorf("WithLiterals changed the receiver: %+v", fs)
	}
	for _, bad := range []Config{{MaxScanBytes: -1}, {Disable: []string{"emails"}}, {DisableRules: []string{"generic-api-kee"}}} {
		if _, err := New(bad); err == nil || errdefs.ClassOf(err) != errdefs.InvalidArgument {
			t.Errorf("New(%+v) = %v, want an invalid-argument error", bad, err)
		}
	}
	if _, err := New(Config{Disable: []string{"secret", "phone"}, DisableRules: []string{"generic-api-key", "pkcs12-file"}}); err != nil {
		t.Errorf("known names refused: %v", err)
	}
}

func TestParseMode(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    Mode
		wantErr bool
	}{{"block", ModeBlock, false}, {"redact", ModeRedact, false}, {"log", ModeLog, false}, {"off", ModeOff, false}, {"", ModeOff, false}, {"Block", "", true}, {"drop", "", true}} {
		t.Run(c.in, func(t *testing.T) {
			got, err := ParseMode(c.in)
			if (err != nil) != c.wantErr || got != c.want {
				t.Errorf("ParseMode(%q) = %q, %v", c.in, got, err)
			}
		})
	}
}

func writePack(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pack.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRulePackAddsRules(t *testing.T) {
	p := writePack(t, `
[[rules]]
id = "acme-token"
type = "acme"
regex = '''acme_([a-z0-9]{16})'''
secretGroup = 1
keywords = ["ACME_"]
entropy = 2.5
[[rules.allowlists]]
stopwords = ["test"]

[[rules]]
id = "aws-access-token"
regex = '''NEVERMATCHES[0-9]{99}'''

[allowlist]
stopwords = ["dummy"]
`)
	e, err := New(Config{Packs: []string{p}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, text string
		want       []string
	}{
		{"pack rule with secret group", "x acme_a1b2c3d4e5f6g7h8 y", []string{"acme@a1b2c3d4e5f6g7h8"}},
		{"pack stopword", "acme_testa1b2c3d4e5f6", nil},
		{"low entropy", "acme_aaaaaaaaaaaaaaaa", nil},
		{"pack overrides a built-in id", "AKIAZ52HGXYRN4WBTEST", nil},
		{"pack global allowlist applies to all rules", `token = "ghp_dummy56789abcdefABCDEF0123456789abcd"`, nil},
		{"built-in rules still run", `token = "ghp_0123456789abcdefABCDEF0123456789abcd"`, []string{"secret@ghp_0123456789abcdefABCDEF0123456789abcd"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := types(c.text, e.Scan([]byte(c.text))); !slices.Equal(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestRulePackErrorsNameFileAndLine(t *testing.T) {
	cases := []struct {
		name, body string
		line       int
		msg        string
	}{
		{"toml syntax", "[[rules]]\nid = \"a\"\nregex = '''x'''\nkeywords = [\n", 4, ""},
		{"bad regex", "[[rules]]\nid = \"a\"\nkeywords = [\"ab\"]\nregex = '''(unclosed'''\n", 4, "regex"},
		{"missing regex", "[[rules]]\nid = \"a\"\n", 2, "regex is required"},
		{"secret group too large", "[[rules]]\nid = \"a\"\nregex = '''(x)'''\nsecretGroup = 2\n", 4, "secretGroup"},
		{"entropy out of range", "[[rules]]\nid = \"a\"\nregex = '''x'''\nentropy = 9\n", 4, "entropy"},
		{"unknown key", "[[rules]]\nid = \"a\"\nregex = '''x'''\nregexp = '''y'''\n", 4, "unknown key"},
		{"bad type", "[[rules]]\nid = \"a\"\nregex = '''x'''\ntype = \"Card!\"\n", 4, "type"},
		{"duplicate id", "[[rules]]\nid = \"a\"\nregex = '''x'''\n[[rules]]\nid = \"a\"\nregex = '''y'''\n", 2, "duplicate"},
		{"bad allowlist regex", "[[rules]]\nid = \"a\"\nregex = '''x'''\n[[rules.allowlists]]\nregexes = ['''(''']\n", 5, "allowlist"},
		{"short keyword", "[[rules]]\nid = \"a\"\nregex = '''x'''\nkeywords = [\"k\"]\n", 4, "keyword"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writePack(t, c.body)
			_, err := New(Config{Packs: []string{p}, NoBuiltinRules: true})
			if err == nil {
				t.Fatal("New accepted a bad pack")
			}
			if errdefs.ClassOf(err) != errdefs.InvalidArgument {
				t.Errorf("class %v, want invalid argument", errdefs.ClassOf(err))
			}
			if want := fmt.Sprintf("%s:%d:", p, c.line); !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q, want it to contain %q and %q", err, want, c.msg)
			}
		})
	}
	if _, err := New(Config{Packs: []string{filepath.Join(t.TempDir(), "missing.toml")}}); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("missing pack: %v", err)
	}
}

func TestBuiltinRulesCompile(t *testing.T) {
	e := testEngine(t)
	// gitleaks v8.30.1 has 222 rules; pkcs12-file is unsupported; agentbox.toml adds 3.
	if got, want := e.RuleCount(), 222-len(Unsupported)+3; got != want {
		t.Errorf("RuleCount = %d, want %d", got, want)
	}
}

func TestScanIsSafeForConcurrentUse(t *testing.T) {
	e := testEngine(t)
	text := []byte("card 4111 1111 1111 1111 mail bob@example.com AKIAZ52HGXYRN4WBTEST call +44 20 7946 0958 or (415) 555-2671")
	want := e.Scan(text)
	if len(want) != 5 {
		t.Fatalf("setup: %d findings", len(want))
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for range 8 {
		wg.Go(func() {
			for range 20 {
				if got := e.Scan(text); !slices.Equal(got, want) {
					errs <- fmt.Sprintf("%+v", got)
					return
				}
				r, _ := http.NewRequest(http.MethodPost, "http://h/?q=1", bytes.NewReader(text))
				if rep, err := e.ScanRequest(r, ModeRedact); err != nil || len(rep.Findings) != 5 {
					errs <- fmt.Sprintf("ScanRequest: %+v %v", rep, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for s := range errs {
		t.Errorf("concurrent Scan differed: %s", s)
	}
}

// Published example values (card networks' test numbers, the IBAN
// registry's examples), written the way their sources print them.
func TestDetectorsFindPublishedExamples(t *testing.T) {
	e := testEngine(t)
	for _, c := range []struct{ typ, value string }{
		{TypeCard, "4242 4242 4242 4242"},
		{TypeCard, "5555 5555 5555 4444"},
		{TypeCard, "2223 0031 2200 3222"},
		{TypeCard, "3782 822463 10005"},
		{TypeCard, "6011 1111 1111 1117"},
		{TypeCard, "3530 1113 3330 0000"},
		{TypeCard, "6200 0000 0000 0005"},
		{TypeCard, "3056 9300 0902 0004"},
		{TypeIBAN, "GB29 NWBK 6016 1331 9268 19"},
		{TypeIBAN, "FR14 2004 1010 0505 0001 3M02 606"},
		{TypeIBAN, "NL91 ABNA 0417 1643 00"},
		{TypeIBAN, "CH93 0076 2011 6238 5295 7"},
		{TypeIBAN, "NO93 8601 1117 947"},
		{TypeIBAN, "DE44500105175407324931"},
		{TypeEmail, "Jane.Doe-Smith@sub.example-mail.co.jp"},
		{TypePhone, "+81 3-1234-5678"},
		{TypePhone, "+49 30 901820"},
		{TypePhone, "415.555.2671"},
	} {
		t.Run(c.typ+" "+c.value, func(t *testing.T) {
			text := "ref: " + c.value + "."
			got := types(text, e.Scan([]byte(text)))
			if !slices.Equal(got, []string{c.typ + "@" + c.value}) {
				t.Errorf("Scan(%q) = %q", text, got)
			}
		})
	}
}

func TestKeywordAndWidthAnalysis(t *testing.T) {
	for _, c := range []struct {
		re       string
		kws      []string
		contains bool
		width    int
	}{
		{`ghp_[0-9a-zA-Z]{36}`, []string{"ghp_"}, true, 40},
		{`(?i)(?:access|auth|(?-i:[Aa]pi|API))=[a-z]{4}`, []string{"access", "auth", "api"}, true, 27}, // (?i) s and [a-z] may match multi-byte ſ and K,
		{`\b((?:A3T[A-Z0-9]|AKIA|ASIA)[A-Z2-7]{16})\b`, []string{"a3t", "akia", "asia"}, true, 20},
		{`(?:sgp_[a-f0-9]{40}|[a-f0-9]{40})`, []string{"sgp_"}, false, 44},
		{`(?i)token[=:]\s*([a-z0-9]+)`, []string{"token"}, true, -1},
		{`x[a-z]{2}y`, nil, false, 4},
	} {
		t.Run(c.re, func(t *testing.T) {
			re, err := syntax.Parse(c.re, syntax.Perl)
			if err != nil {
				t.Fatal(err)
			}
			re = re.Simplify()
			if got := containsKeyword(re, c.kws); got != c.contains {
				t.Errorf("containsKeyword = %v, want %v", got, c.contains)
			}
			if got := maxWidth(re); got != c.width {
				t.Errorf("maxWidth = %d, want %d", got, c.width)
			}
		})
	}
}
