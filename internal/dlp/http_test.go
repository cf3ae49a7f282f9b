package dlp

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"io"
	"mime/multipart"
	"mime/quotedprintable"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

const cardText = `{"name":"Bob","card":"4111 1111 1111 1111"}`

func encode(t testing.TB, coding string, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	switch coding {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "deflate":
		w = zlib.NewWriter(&buf)
	case "raw-deflate":
		w, _ = flate.NewWriter(&buf, flate.DefaultCompression)
	case "br":
		w = brotli.NewWriter(&buf)
	case "zstd":
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w = zw
	default:
		return b
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func newReq(t testing.TB, target string, body []byte, hdr map[string]string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	return r
}

func readBody(t testing.TB, rc io.ReadCloser) []byte {
	t.Helper()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestScanRequestDecodesContentEncodings(t *testing.T) {
	e := testEngine(t)
	for _, c := range []struct{ name, coding, header string }{
		{"identity", "", ""},
		{"gzip", "gzip", "gzip"},
		{"deflate zlib", "deflate", "deflate"},
		{"deflate raw", "raw-deflate", "deflate"},
		{"br", "br", "br"},
		{"zstd", "zstd", "zstd"},
		{"stacked gzip then br", "gzip+br", "gzip, br"},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := []byte(cardText)
			for _, step := range strings.Split(c.coding, "+") {
				body = encode(t, step, body)
			}
			hdr := map[string]string{"Content-Type": "application/json"}
			if c.header != "" {
				hdr["Content-Encoding"] = c.header
			}
			r := newReq(t, "http://api.example.com/v1/upload", body, hdr)
			rep, err := e.ScanRequest(r, ModeBlock)
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Blocked || len(rep.Findings) != 1 || rep.Findings[0].Type != TypeCard || rep.Findings[0].Part != "body" {
				t.Fatalf("report %+v, want one blocked card in body", rep)
			}
			if !strings.Contains(rep.Reason, "card in body") || strings.Contains(rep.Reason, "4111") {
				t.Errorf("reason %q", rep.Reason)
			}
			// Block only reports: the body is replayed byte for byte.
			if got := readBody(t, r.Body); !bytes.Equal(got, body) {
				t.Errorf("body changed under block")
			}
		})
	}
}

func TestScanRequestRedactRewritesBody(t *testing.T) {
	e := testEngine(t)
	for _, coding := range []string{"", "gzip", "br", "zstd"} {
		t.Run("encoding "+coding, func(t *testing.T) {
			hdr := map[string]string{"Content-Type": "application/json", "Content-MD5": "x", "Digest": "sha-256=x"}
			if coding != "" {
				hdr["Content-Encoding"] = coding
			}
			r := newReq(t, "http://api.example.com/v1/upload", encode(t, coding, []byte(cardText)), hdr)
			rep, err := e.ScanRequest(r, ModeRedact)
			if err != nil {
				t.Fatal(err)
			}
			want := `{"name":"Bob","card":"[REDACTED:card]"}`
			if !rep.Redacted || rep.Blocked {
				t.Fatalf("report %+v", rep)
			}
			if got := string(readBody(t, r.Body)); got != want {
				t.Errorf("body %q, want %q", got, want)
			}
			if r.ContentLength != int64(len(want)) || r.Header.Get("Content-Length") != strconv.Itoa(len(want)) {
				t.Errorf("content length %d / %q", r.ContentLength, r.Header.Get("Content-Length"))
			}
			if r.GetBody == nil {
				t.Fatal("GetBody dropped")
			}
			rb, _ := r.GetBody()
			if got := string(readBody(t, rb)); got != want {
				t.Errorf("GetBody replays %q, want the redacted body", got)
			}
			for _, h := range []string{"Content-Encoding", "Content-Md5", "Digest"} {
				if r.Header.Get(h) != "" {
					t.Errorf("%s kept: %q", h, r.Header.Get(h))
				}
			}
		})
	}
}

func TestScanRequestURLAndHeaders(t *testing.T) {
	e := testEngine(t)
	r := newReq(t, "http://api.example.com/v1/pay?card=4111%201111%201111%201111&x=1", nil, map[string]string{
		"X-Api-Key": "AKIAZ52HGXYRN4WBTEST", "Accept": "application/json",
	})
	r.RequestURI = r.URL.RequestURI() // as a server-side request has it
	rep, err := e.ScanRequest(r, ModeLog)
	if err != nil {
		t.Fatal(err)
	}
	parts := map[string]string{}
	for _, f := range rep.Findings {
		parts[f.Part] = f.Type
	}
	if parts["url"] != TypeCard || parts["header:X-Api-Key"] != TypeSecret || len(rep.Findings) != 2 {
		t.Fatalf("findings %+v", rep.Findings)
	}
	if rep.Blocked || rep.Redacted {
		t.Errorf("log mode blocked or redacted: %+v", rep)
	}
	if _, err := e.ScanRequest(r, ModeRedact); err != nil {
		t.Fatal(err)
	}
	if got := r.URL.RawQuery; got != "card=%5BREDACTED%3Acard%5D&x=1" {
		t.Errorf("query %q", got)
	}
	if r.RequestURI != "/v1/pay?card=%5BREDACTED%3Acard%5D&x=1" {
		t.Errorf("RequestURI %q", r.RequestURI)
	}
	if got := r.Header.Get("X-Api-Key"); got != "[REDACTED:secret]" {
		t.Errorf("header %q", got)
	}
}

func TestScanRequestUndecodableBody(t *testing.T) {
	e := testEngine(t)
	for _, c := range []struct {
		name, coding string
		body         []byte
	}{
		{"unknown encoding", "compress", []byte(cardText)},
		{"corrupt gzip", "gzip", []byte("not gzip at all, 4111 1111 1111 1111")},
		{"truncated gzip", "gzip", encode(t, "gzip", bytes.Repeat([]byte(cardText), 50))[:40]},
		{"corrupt zstd", "zstd", []byte("nope")},
	} {
		for _, m := range []struct {
			mode    Mode
			blocked bool
		}{{ModeBlock, true}, {ModeRedact, true}, {ModeLog, false}} {
			t.Run(c.name+" "+string(m.mode), func(t *testing.T) {
				r := newReq(t, "http://h/", c.body, map[string]string{"Content-Encoding": c.coding})
				rep, err := e.ScanRequest(r, m.mode)
				if err != nil {
					t.Fatal(err)
				}
				if rep.Blocked != m.blocked || !strings.Contains(rep.Reason, "cannot be decoded") {
					t.Errorf("report %+v, want blocked=%v with a decode reason", rep, m.blocked)
				}
				if got := readBody(t, r.Body); !bytes.Equal(got, c.body) {
					t.Errorf("body not replayed")
				}
			})
		}
	}
}

func TestScanRequestBoundedByMaxScanBytes(t *testing.T) {
	e, err := New(Config{MaxScanBytes: 1024})
	if err != nil {
		t.Fatal(err)
	}
	pad := bytes.Repeat([]byte("lorem ipsum "), 200) // 2400 bytes
	t.Run("finding past the window is not scanned", func(t *testing.T) {
		body := append(append([]byte{}, pad...), cardText...)
		r := newReq(t, "http://h/", body, nil)
		rep, err := e.ScanRequest(r, ModeBlock)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Truncated || rep.Blocked || rep.Scanned > 1024 {
			t.Errorf("report %+v", rep)
		}
		if got := readBody(t, r.Body); !bytes.Equal(got, body) {
			t.Errorf("body not replayed")
		}
	})
	t.Run("redact in the window keeps the unscanned rest", func(t *testing.T) {
		body := append([]byte(cardText), pad...)
		r := newReq(t, "http://h/", encode(t, "gzip", body), map[string]string{"Content-Encoding": "gzip"})
		rep, err := e.ScanRequest(r, ModeRedact)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Truncated || !rep.Redacted {
			t.Fatalf("report %+v", rep)
		}
		want := strings.Replace(string(body), "4111 1111 1111 1111", "[REDACTED:card]", 1)
		if got := string(readBody(t, r.Body)); got != want {
			t.Errorf("body %d bytes, want %d", len(got), len(want))
		}
		if r.ContentLength != -1 || r.Header.Get("Content-Length") != "" || r.Header.Get("Content-Encoding") != "" || r.GetBody != nil {
			t.Errorf("length %d, headers %v", r.ContentLength, r.Header)
		}
	})
	t.Run("decompression bomb reads only the window", func(t *testing.T) {
		bomb := encode(t, "gzip", make([]byte, 64<<20))
		r := newReq(t, "http://h/", bomb, map[string]string{"Content-Encoding": "gzip"})
		rep, err := e.ScanRequest(r, ModeBlock)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Truncated || rep.Scanned > 1024 {
			t.Errorf("report %+v", rep)
		}
	})
}

func TestScanRequestMultipart(t *testing.T) {
	e := testEngine(t)
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if err := mw.WriteField("comment", "hello"); err != nil {
		t.Fatal(err)
	}
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", `form-data; name="doc"; filename="a.txt"`)
	h.Set("Content-Transfer-Encoding", "quoted-printable")
	pw, _ := mw.CreatePart(h)
	qw := quotedprintable.NewWriter(pw)
	// "=" soft line breaks split the SSN in the raw body.
	io.WriteString(qw, strings.Repeat("x", 67)+" ssn 536-22-1234 end")
	qw.Close()
	h2 := textproto.MIMEHeader{}
	h2.Set("Content-Disposition", `form-data; name="key"`)
	h2.Set("Content-Transfer-Encoding", "base64")
	pw2, _ := mw.CreatePart(h2)
	io.WriteString(pw2, "aWJhbiBHQjgyV0VTVDEyMzQ1Njk4NzY1NDMyIHRoYW5rcw==\r\n")
	mw.Close()
	if bytes.Contains(buf.Bytes(), []byte("536-22-1234")) {
		t.Fatal("test setup: the SSN should be split by a soft line break")
	}
	r := newReq(t, "http://h/upload", buf.Bytes(), map[string]string{"Content-Type": mw.FormDataContentType()})
	rep, err := e.ScanRequest(r, ModeRedact)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range rep.Findings {
		got[f.Part] = f.Type
	}
	if len(rep.Findings) != 2 || got["body/part[1]"] != TypeUSSSN || got["body"] != TypeIBAN {
		t.Fatalf("findings %+v", rep.Findings)
	}
	// The redacted body is still multipart with the same boundary.
	mr := multipart.NewReader(r.Body, mw.Boundary())
	var contents []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		contents = append(contents, string(readBody(t, p)))
	}
	if len(contents) != 3 || contents[0] != "hello" || !strings.Contains(contents[1], "[REDACTED:us_ssn]") || contents[2] != "[REDACTED:iban]\r\n" && contents[2] != "[REDACTED:iban]" {
		t.Errorf("parts after redaction: %q", contents)
	}
}

func TestScanResponse(t *testing.T) {
	e := testEngine(t)
	body := encode(t, "gzip", []byte("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"))
	mk := func() *http.Response {
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Encoding": {"gzip"}, "Content-Length": {strconv.Itoa(len(body))}},
			Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
	}
	for _, c := range []struct {
		mode              Mode
		blocked, redacted bool
		findings          int
	}{{ModeOff, false, false, 0}, {ModeLog, false, false, 1}, {ModeBlock, true, false, 1}, {ModeRedact, false, true, 1}} {
		t.Run(string(c.mode), func(t *testing.T) {
			resp := mk()
			rep, err := e.ScanResponse(resp, c.mode)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Blocked != c.blocked || rep.Redacted != c.redacted || len(rep.Findings) != c.findings {
				t.Fatalf("report %+v", rep)
			}
			got := readBody(t, resp.Body)
			if c.redacted {
				if string(got) != "token [REDACTED:jwt]" || resp.ContentLength != int64(len(got)) || resp.Header.Get("Content-Encoding") != "" {
					t.Errorf("redacted response %q len %d hdr %v", got, resp.ContentLength, resp.Header)
				}
			} else if !bytes.Equal(got, body) {
				t.Errorf("body changed")
			}
		})
	}
}

// errReader fails after its data, as a dropped connection does.
type errReader struct{ data []byte }

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.ErrClosedPipe
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestScanRequestReadErrorIsReturned(t *testing.T) {
	e := testEngine(t)
	r := newReq(t, "http://h/", nil, nil)
	r.Body = io.NopCloser(&errReader{data: []byte("partial")})
	if _, err := e.ScanRequest(r, ModeBlock); err == nil || !strings.Contains(err.Error(), "read body") {
		t.Errorf("err = %v, want a read error", err)
	}
}

func TestScanUnknownModeFailsClosed(t *testing.T) {
	e := testEngine(t)
	r := newReq(t, "http://h/", []byte("hello"), nil)
	rep, err := e.ScanRequest(r, Mode("Block"))
	if err == nil || !rep.Blocked {
		t.Errorf("request: report %+v, err %v", rep, err)
	}
	resp := &http.Response{Header: http.Header{}, Body: io.NopCloser(strings.NewReader("x"))}
	if rep, err := e.ScanResponse(resp, Mode("redacted")); err == nil || !rep.Blocked {
		t.Errorf("response: report %+v, err %v", rep, err)
	}
}

func TestScanRequestHost(t *testing.T) {
	e := testEngine(t)
	for _, c := range []struct {
		mode              Mode
		blocked, redacted bool
	}{{ModeLog, false, false}, {ModeBlock, true, false}, {ModeRedact, true, false}} {
		t.Run(string(c.mode), func(t *testing.T) {
			r := newReq(t, "http://4111111111111111.files.example.com/", nil, nil)
			rep, err := e.ScanRequest(r, c.mode)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Findings) != 1 || rep.Findings[0].Part != "host" || rep.Findings[0].Type != TypeCard {
				t.Fatalf("findings %+v", rep.Findings)
			}
			if rep.Blocked != c.blocked || rep.Redacted != c.redacted || r.Host != "4111111111111111.files.example.com" {
				t.Errorf("report %+v, host %q", rep, r.Host)
			}
		})
	}
}
