package dlp

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// FuzzScanRedact: Scan never panics, its findings are ordered and lie inside
// the text, and Redact's output is exactly the text with every (merged)
// span replaced by its marker.
func FuzzScanRedact(f *testing.F) {
	for _, s := range []string{
		"card 4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "bob@example.com", "+1 (415) 555-2671",
		"ssn 536-22-1234", "1234 5678 9018", "AKIAZ52HGXYRN4WBTEST", `{"k":"\u0034111 1111 1111 1111"}`,
		"q=4111%201111%201111%201111", "-----BEGIN PRIVATE KEY-----\nMIIE", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcdefghijklmnopqrstuvwxyz012345",
	} {
		f.Add([]byte(s))
	}
	e := testEngine(f)
	f.Fuzz(func(t *testing.T, text []byte) {
		fs := e.Scan(text)
		for i, x := range fs {
			if x.Start < 0 || x.End > len(text) || x.Start >= x.End || x.Type == "" || x.Rule == "" {
				t.Fatalf("bad finding %+v for %d bytes", x, len(text))
			}
			if i > 0 && fs[i-1].Start > x.Start {
				t.Fatalf("findings not ordered: %+v", fs)
			}
		}
		red := Redact(text, fs)
		// Rebuild the expected output from the merged spans and compare.
		var want bytes.Buffer
		pos := 0
		for _, s := range mergeSpans(fs, len(text)) {
			want.Write(text[pos:s.Start])
			want.WriteString(Marker(s.Type))
			pos = s.End
		}
		want.Write(text[pos:])
		if !bytes.Equal(red, want.Bytes()) {
			t.Fatalf("Redact output differs from the spans")
		}
		if len(fs) == 0 && !bytes.Equal(red, text) {
			t.Fatalf("Redact without findings changed the text")
		}
	})
}

// FuzzScanRequestBody: any body under any Content-Encoding and type is
// scanned without panics; under block and log the body is replayed byte
// for byte, under redact a rewritten body matches its Content-Length.
func FuzzScanRequestBody(f *testing.F) {
	f.Add([]byte(cardText), "", "application/json", uint8(0))
	f.Add(encode(f, "gzip", []byte(cardText)), "gzip", "application/json", uint8(2))
	f.Add(encode(f, "br", []byte("ssn 536-22-1234")), "br", "text/plain", uint8(2))
	f.Add(encode(f, "zstd", []byte("a=4111+1111+1111+1111")), "zstd", "application/x-www-form-urlencoded", uint8(1))
	f.Add(encode(f, "deflate", []byte(cardText)), "deflate", "", uint8(0))
	f.Add([]byte("--b\r\nContent-Transfer-Encoding: base64\r\n\r\nNDExMSAxMTExIDExMTEgMTExMQ==\r\n--b--\r\n"), "", "multipart/form-data; boundary=b", uint8(2))
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0}, "gzip", "", uint8(0))
	e, err := New(Config{MaxScanBytes: 4096})
	if err != nil {
		f.Fatal(err)
	}
	modes := []Mode{ModeBlock, ModeLog, ModeRedact}
	f.Fuzz(func(t *testing.T, body []byte, coding, ctype string, m uint8) {
		mode := modes[int(m)%len(modes)]
		r, err := http.NewRequest(http.MethodPost, "http://h/p", bytes.NewReader(body))
		if err != nil {
			t.Skip()
		}
		if strings.ContainsAny(coding+ctype, "\r\n\x00") {
			return // not representable in a header
		}
		r.Header.Set("Content-Encoding", coding)
		r.Header.Set("Content-Type", ctype)
		rep, err := e.ScanRequest(r, mode)
		if err != nil {
			t.Fatalf("ScanRequest: %v", err) // bytes.Reader never fails
		}
		got, err := io.ReadAll(r.Body)
		if err != nil {
			t.Fatalf("read body: %v", err)
		}
		if rep.Redacted {
			if r.ContentLength >= 0 && int64(len(got)) != r.ContentLength {
				t.Fatalf("Content-Length %d, body %d", r.ContentLength, len(got))
			}
			return
		}
		if !bytes.Equal(got, body) {
			t.Fatalf("body not replayed under %s (report %+v)", mode, rep)
		}
		if fixed := int64(len("/p") + len(coding) + len(ctype)); rep.Scanned > max(4096, fixed) {
			t.Fatalf("scanned %d bytes, window 4096", rep.Scanned)
		}
	})
}

// FuzzRulesWindowedEqualWhole: the keyword windows, chunks and anchored
// runs find exactly what every rule's regex finds over the whole text.
func FuzzRulesWindowedEqualWhole(f *testing.F) {
	for _, s := range []string{
		`api_key = "a8f5f167f44f4964e6c998dee827110c"`, `{"auth_token":"Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5"}`,
		"very_long_identifier_very_long_identifier_very_long_identifier_secret=QWxhZGRpbjpvcGVuIHNlc2FtZQ12",
		"token:'x9f8e7d6c5b4a39281'token:'y9f8e7d6c5b4a39282'", "AKIAZ52HGXYRN4WBTEST ghp_0123456789abcdefABCDEF0123456789abcd",
		"password=hunter2hunter2hunter2 passwd: s3cr3tP4ssw0rd!!",
	} {
		f.Add([]byte(s))
	}
	e := testEngine(f)
	f.Fuzz(func(t *testing.T, text []byte) {
		var got, want []Finding
		e.rules.scan(text, nil, &got)
		for _, r := range e.rules.rules {
			r.findIn(text, 0, len(text), 0, len(text), e.rules.global, &want)
		}
		key := func(fs []Finding) []string {
			var out []string
			for _, f := range fs {
				out = append(out, fmt.Sprintf("%s@%d-%d", f.Rule, f.Start, f.End))
			}
			slices.Sort(out)
			return out
		}
		if g, w := key(got), key(want); !slices.Equal(g, w) {
			t.Fatalf("windowed %q\nwhole    %q", g, w)
		}
	})
}
