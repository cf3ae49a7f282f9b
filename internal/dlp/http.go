package dlp

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// Report is what scanning one HTTP message found and did.
type Report struct {
	Findings  []Finding // spans are relative to their Part (the URL, a header value, the decoded body)
	Blocked   bool      // the caller must refuse the message (block mode with findings, or a body that cannot be inspected)
	Redacted  bool      // the message was rewritten (redact mode)
	Reason    string    // why, naming detector types and parts, never values; "" when nothing was found
	Scanned   int64     // bytes scanned (URL, header values, decoded body)
	Truncated bool      // the decoded body was longer than MaxScanBytes: the rest was not scanned
}

// ErrUndecodable marks a body whose Content-Encoding is unknown or corrupt.
var ErrUndecodable = errors.New("dlp: body cannot be decoded")

// ScanRequest scans r's Host, URL (path and query), header values and body
// (decoded per Content-Encoding: gzip, br, zstd, deflate; JSON escapes, form
// encoding, base64 and multipart parts understood), within MaxScanBytes.
//
// Under ModeRedact it rewrites r: findings replaced by [REDACTED:<type>], the
// body sent as identity (Content-Encoding dropped, Content-Length fixed, or
// -1 when the body was longer than the scan window), digest headers dropped.
// Under ModeBlock it only reports. An unknown or corrupt Content-Encoding
// counts as Blocked under block and redact (nothing can be inspected or
// redacted) and is reported under log. Otherwise r's body is left as it was
// (its bytes are replayed). The error is for I/O failures reading the body.
//
// An unknown mode is an error with a Blocked report (fail closed).
func (e *Engine) ScanRequest(r *http.Request, mode Mode) (Report, error) {
	if mode == ModeOff || mode == "" {
		return Report{}, nil
	}
	if _, err := ParseMode(string(mode)); err != nil {
		return Report{Blocked: true, Reason: err.Error()}, err
	}
	m := message{header: r.Header, body: &r.Body, contentLength: &r.ContentLength, transferEncoding: &r.TransferEncoding, getBody: &r.GetBody}
	m.host = r.Host
	if r.URL != nil {
		m.url = r.URL
		m.requestURI = &r.RequestURI
		if m.host == "" {
			m.host = r.URL.Host
		}
	}
	return e.scanMessage(&m, mode)
}

// ScanResponse is ScanRequest for a response (headers and body).
func (e *Engine) ScanResponse(resp *http.Response, mode Mode) (Report, error) {
	if mode == ModeOff || mode == "" {
		return Report{}, nil
	}
	if _, err := ParseMode(string(mode)); err != nil {
		return Report{Blocked: true, Reason: err.Error()}, err
	}
	m := message{header: resp.Header, body: &resp.Body, contentLength: &resp.ContentLength, transferEncoding: &resp.TransferEncoding}
	return e.scanMessage(&m, mode)
}

type message struct {
	host             string // the request's Host ("" for responses)
	url              *url.URL
	requestURI       *string
	header           http.Header
	body             *io.ReadCloser
	contentLength    *int64
	transferEncoding *[]string
	// getBody is the request's GetBody: a retry or redirect must resend
	// the redacted body, never the original.
	getBody *func() (io.ReadCloser, error)
}

// digestHeaders no longer match a redacted body.
var digestHeaders = []string{"Content-Md5", "Digest", "Content-Digest", "Repr-Digest", "Want-Digest"}

func (e *Engine) scanMessage(m *message, mode Mode) (Report, error) {
	var rep Report
	budget := e.maxScan
	redact := mode == ModeRedact

	if m.host != "" {
		// Data can leave in a name too (4111....evil.example under an
		// allowed wildcard). A host cannot be redacted: under redact a
		// finding there blocks.
		fs := e.Scan([]byte(m.host))
		rep.Scanned += int64(len(m.host))
		budget -= int64(len(m.host))
		rep.add("host", fs)
		if redact && len(fs) > 0 {
			rep.Blocked = true
		}
	}
	if m.url != nil {
		uri := []byte(m.url.RequestURI())
		fs := e.Scan(uri)
		rep.Scanned += int64(len(uri))
		budget -= int64(len(uri))
		rep.add("url", fs)
		if redact && len(fs) > 0 {
			if err := rewriteURL(m, redactWith(uri, fs, urlMarker)); err != nil {
				return rep, err
			}
			rep.Redacted = true
		}
	}

	names := make([]string, 0, len(m.header))
	for k := range m.header {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		vals := m.header[k]
		for i, v := range vals {
			fs := e.Scan([]byte(v))
			rep.Scanned += int64(len(v))
			budget -= int64(len(v))
			rep.add("header:"+k, fs)
			if redact && len(fs) > 0 {
				vals[i] = string(Redact([]byte(v), fs))
				rep.Redacted = true
			}
		}
	}

	if m.body != nil && *m.body != nil && *m.body != http.NoBody {
		if err := e.scanBody(m, mode, max(budget, 0), &rep); err != nil {
			return rep, err
		}
	}
	if len(rep.Findings) > 0 {
		rep.Blocked = rep.Blocked || mode == ModeBlock
		if rep.Reason == "" {
			rep.Reason = reason(rep.Findings)
		}
	}
	return rep, nil
}

func (rep *Report) add(part string, fs []Finding) {
	for _, f := range fs {
		f.Part = part
		rep.Findings = append(rep.Findings, f)
	}
}

// reason names what was found where, e.g. "dlp: card in body; secret
// (aws-access-token) in header:Authorization".
func reason(fs []Finding) string {
	var parts []string
	seen := map[string]bool{}
	for _, f := range fs {
		what := f.Type
		if f.Rule != f.Type {
			what += " (" + f.Rule + ")"
		}
		s := what + " in " + strings.SplitN(f.Part, "/", 2)[0]
		if !seen[s] {
			seen[s] = true
			parts = append(parts, s)
		}
	}
	return "dlp: " + strings.Join(parts, "; ")
}

// urlMarker is Marker percent-encoded, so a redacted URL stays a valid URL.
func urlMarker(typ string) string { return "%5BREDACTED%3A" + url.PathEscape(typ) + "%5D" }

func rewriteURL(m *message, uri []byte) error {
	u, err := url.ParseRequestURI(string(uri))
	if err != nil {
		return fmt.Errorf("dlp: redacted url does not parse: %w", err)
	}
	m.url.Path, m.url.RawPath, m.url.RawQuery = u.Path, u.RawPath, u.RawQuery
	if m.requestURI != nil && *m.requestURI != "" {
		*m.requestURI = m.url.RequestURI()
	}
	return nil
}

// scanBody reads at most budget decoded bytes, scans them and either
// restores the body byte for byte or (redact with findings) replaces it.
func (e *Engine) scanBody(m *message, mode Mode, budget int64, rep *Report) error {
	orig := *m.body
	var raw bytes.Buffer
	src := &errTap{r: orig, keep: &raw}
	dec, closeDec, decErr := decoder(m.header.Values("Content-Encoding"), src)
	var all []byte // budget+1 bytes at most: one more tells a truncated body
	var readErr error
	if decErr == nil {
		all, readErr = io.ReadAll(io.LimitReader(dec, budget+1))
	}
	restore := func() {
		*m.body = replayBody{Reader: io.MultiReader(bytes.NewReader(raw.Bytes()), orig), c: orig}
	}
	// An error the body itself did not return came from a decoder: the
	// encoding is corrupt or truncated.
	if decErr == nil && readErr != nil && src.err == nil {
		decErr = fmt.Errorf("%w: content-encoding %q: %v", ErrUndecodable, strings.Join(m.header.Values("Content-Encoding"), ","), readErr)
	}
	if decErr != nil {
		closeDec()
		restore()
		rep.Reason = decErr.Error()
		rep.Blocked = mode == ModeBlock || mode == ModeRedact
		return nil
	}
	if readErr != nil {
		closeDec()
		restore()
		return fmt.Errorf("dlp: read body: %w", readErr)
	}
	text := all
	if int64(len(all)) > budget {
		text = all[:budget]
		rep.Truncated = true
	}
	rep.Scanned += int64(len(text))
	fs := e.Scan(text)
	rep.add("body", fs)
	if mt, params, err := mime.ParseMediaType(m.header.Get("Content-Type")); err == nil && strings.HasPrefix(mt, "multipart/") && params["boundary"] != "" {
		for i, p := range multipartParts(text, params["boundary"]) {
			if p.decoded != nil {
				for _, f := range e.Scan(p.decoded) {
					if slices.ContainsFunc(fs, func(b Finding) bool { return b.Type == f.Type && b.Start < p.end && p.start < b.End }) {
						continue // already found in the raw body (a base64 run)
					}
					rep.Findings = append(rep.Findings, Finding{Type: f.Type, Rule: f.Rule, Start: p.start, End: p.end, Part: "body/part[" + strconv.Itoa(i) + "]"})
					fs = append(fs, Finding{Type: f.Type, Start: p.start, End: p.end})
				}
			}
		}
	}
	if mode != ModeRedact || len(fs) == 0 {
		closeDec()
		restore()
		return nil
	}
	// Redact: the guest's bytes are replaced by the redacted decoded text,
	// sent as identity; an unscanned remainder follows decoded.
	red := Redact(text, fs)
	m.header.Del("Content-Encoding")
	for _, h := range digestHeaders {
		m.header.Del(h)
	}
	if rep.Truncated {
		// The unscanned rest follows decoded, so the length is unknown;
		// its raw bytes need no copy any more.
		src.keep = nil
		rest := io.MultiReader(bytes.NewReader(red), bytes.NewReader(all[budget:]), dec)
		*m.body = replayBody{Reader: rest, c: closerFunc(func() error { closeDec(); return orig.Close() })}
		*m.contentLength = -1
		m.header.Del("Content-Length")
		if m.getBody != nil {
			*m.getBody = nil // the stream cannot be replayed
		}
	} else {
		closeDec()
		_ = orig.Close()
		*m.body = io.NopCloser(bytes.NewReader(red))
		*m.contentLength = int64(len(red))
		*m.transferEncoding = nil // the length is known now
		m.header.Set("Content-Length", strconv.Itoa(len(red)))
		if m.getBody != nil {
			*m.getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(red)), nil }
		}
	}
	rep.Redacted = true
	return nil
}

type replayBody struct {
	io.Reader
	c io.Closer
}

func (b replayBody) Close() error { return b.c.Close() }

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// errTap copies what it reads into keep (while set), for replaying the
// raw body, and remembers the first error other than EOF its reader
// returned, which tells transport errors from decoding errors.
type errTap struct {
	r    io.Reader
	keep *bytes.Buffer
	err  error
}

func (t *errTap) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if t.keep != nil {
		t.keep.Write(p[:n])
	}
	if err != nil && err != io.EOF && t.err == nil {
		t.err = err
	}
	return n, err
}

// maxZstdWindow bounds a zstd frame's memory (the spec's decoder minimum is 8 MiB).
const maxZstdWindow = 8 << 20

// decoder stacks decoders for a Content-Encoding list (applied in order, so
// decoded in reverse).
func decoder(values []string, r io.Reader) (io.Reader, func(), error) {
	var codings []string
	for _, v := range values {
		for _, c := range strings.Split(v, ",") {
			if c = strings.ToLower(strings.TrimSpace(c)); c != "" && c != "identity" {
				codings = append(codings, c)
			}
		}
	}
	closers := []func(){}
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	for i := len(codings) - 1; i >= 0; i-- {
		switch codings[i] {
		case "gzip", "x-gzip":
			r = &lazy{open: func(src io.Reader) (io.Reader, error) { return gzip.NewReader(src) }, src: r}
		case "deflate":
			r = &lazy{open: openDeflate, src: r}
		case "br":
			r = brotli.NewReader(r)
		case "zstd":
			zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(64<<20))
			if err != nil {
				closeAll()
				return nil, func() {}, fmt.Errorf("%w: zstd: %v", ErrUndecodable, err)
			}
			closers = append(closers, zr.Close)
			r = zr
		default:
			closeAll()
			return nil, func() {}, fmt.Errorf("%w: unknown content-encoding %q", ErrUndecodable, codings[i])
		}
	}
	return r, closeAll, nil
}

// lazy opens a decoder on first Read, so a header error surfaces as a read
// error (classified by isDecodeError) instead of at construction.
type lazy struct {
	open func(io.Reader) (io.Reader, error)
	src  io.Reader
	r    io.Reader
}

func (l *lazy) Read(p []byte) (int, error) {
	if l.r == nil {
		r, err := l.open(l.src)
		if err != nil {
			if err == io.EOF {
				return 0, io.EOF // empty body
			}
			return 0, fmt.Errorf("%w: %v", ErrUndecodable, err)
		}
		l.r = r
	}
	return l.r.Read(p)
}

// openDeflate: HTTP's "deflate" is zlib-wrapped, but some senders use raw
// DEFLATE; the zlib header (CMF 0x78 ...) tells them apart.
func openDeflate(src io.Reader) (io.Reader, error) {
	var hdr [2]byte
	n, err := io.ReadFull(src, hdr[:])
	if err != nil {
		if n == 0 {
			return nil, io.EOF
		}
		return nil, err
	}
	all := io.MultiReader(bytes.NewReader(hdr[:n]), src)
	if hdr[0]&0x0f == 8 && (uint16(hdr[0])<<8|uint16(hdr[1]))%31 == 0 {
		return zlib.NewReader(all)
	}
	return flate.NewReader(all), nil
}

// mimePart is one multipart part's content span in the body, decoded when
// its Content-Transfer-Encoding hides the text (base64, quoted-printable).
type mimePart struct {
	start, end int
	decoded    []byte
}

func multipartParts(body []byte, boundary string) []mimePart {
	delim := []byte("--" + boundary)
	var parts []mimePart
	pos := bytes.Index(body, delim)
	for pos >= 0 {
		next := bytes.Index(body[pos+len(delim):], append([]byte("\r\n"), delim...))
		if next < 0 {
			next = bytes.Index(body[pos+len(delim):], append([]byte("\n"), delim...))
		}
		partStart := pos + len(delim)
		partEnd := len(body)
		if next >= 0 {
			partEnd = partStart + next
		}
		seg := body[partStart:partEnd]
		if bytes.HasPrefix(seg, []byte("--")) {
			break // closing delimiter
		}
		// The delimiter line ends with optional padding and CRLF.
		if nl := bytes.IndexByte(seg, '\n'); nl >= 0 {
			partStart += nl + 1
			seg = seg[nl+1:]
		}
		hdrEnd := bytes.Index(seg, []byte("\r\n\r\n"))
		sep := 4
		if hdrEnd < 0 {
			hdrEnd, sep = bytes.Index(seg, []byte("\n\n")), 2
		}
		if hdrEnd >= 0 {
			p := mimePart{start: partStart + hdrEnd + sep, end: partEnd}
			tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(seg[:hdrEnd+sep])))
			if h, err := tp.ReadMIMEHeader(); err == nil || errors.Is(err, io.EOF) {
				content := body[p.start:p.end]
				switch strings.ToLower(h.Get("Content-Transfer-Encoding")) {
				case "base64":
					clean := bytes.Map(func(r rune) rune {
						if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
							return -1
						}
						return r
					}, content)
					if d, err := base64.StdEncoding.DecodeString(string(clean)); err == nil {
						p.decoded = d
					}
				case "quoted-printable":
					if d, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(content))); err == nil {
						p.decoded = d
					}
				}
			}
			parts = append(parts, p)
		}
		if next < 0 {
			break
		}
		pos = bytes.Index(body[partEnd:], delim)
		if pos >= 0 {
			pos += partEnd
		}
	}
	return parts
}
