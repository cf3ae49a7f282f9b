package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
)

// Sink receives every committed event, in order, from the writer goroutine.
type Sink interface {
	Name() string
	Write(ev api.AuditEvent) error
}

// Export formats.
const (
	FormatJSONL = "jsonl" // the API's event JSON, one per line, chain fields included
	FormatOCSF  = "ocsf"  // OCSF 1.x JSON lines: HTTP Activity (4002) for egress, Authentication (3002), API Activity (6003)
	FormatCEF   = "cef"   // ArcSight Common Event Format lines
)

// Product is what OCSF metadata and CEF headers name; Version is set by the server.
var (
	Product = "agentbox"
	Version = "dev"
)

type lineSink struct {
	name   string
	mu     sync.Mutex // guards w: Write may be called from the writer only, but Close from elsewhere
	w      io.Writer
	c      io.Closer
	format func(api.AuditEvent) ([]byte, error)
}

func (s *lineSink) Name() string { return s.name }

func (s *lineSink) Write(ev api.AuditEvent) error {
	b, err := s.format(ev)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err = s.w.Write(append(b, '\n'))
	return err
}

func (s *lineSink) Close() error {
	if s.c == nil {
		return nil
	}
	return s.c.Close()
}

// NewSink writes format lines to w.
func NewSink(format string, w io.Writer) (Sink, error) {
	f, ok := formats[format]
	if !ok {
		return nil, fmt.Errorf("audit export format %q: want jsonl, ocsf or cef", format)
	}
	return &lineSink{name: format, w: w, format: f}, nil
}

// OpenSink parses an --audit-export value, FORMAT:PATH (PATH "-" is stdout), and opens the file for
// appending (0600). The returned sink is an io.Closer.
func OpenSink(spec string, stdout io.Writer) (Sink, error) {
	format, path, ok := strings.Cut(spec, ":")
	if !ok || path == "" {
		return nil, fmt.Errorf("audit export %q: want FORMAT:PATH, e.g. ocsf:/var/log/agentbox-audit.json or cef:- for stdout", spec)
	}
	if path == "-" {
		s, err := NewSink(format, stdout)
		return s, err
	}
	if _, ok := formats[format]; !ok {
		return nil, fmt.Errorf("audit export format %q: want jsonl, ocsf or cef", format)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit export: %w", err)
	}
	s, _ := NewSink(format, f)
	s.(*lineSink).c = f
	s.(*lineSink).name = spec
	return s, nil
}

var formats = map[string]func(api.AuditEvent) ([]byte, error){
	FormatJSONL: func(ev api.AuditEvent) ([]byte, error) { return json.Marshal(ev) },
	FormatOCSF:  ocsf,
	FormatCEF:   func(ev api.AuditEvent) ([]byte, error) { return []byte(cef(ev)), nil },
}

func str(d map[string]any, k string) string {
	switch v := d[k].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	}
	return ""
}

// severity: 1 informational, 3 medium (a block or an error), 4 high (DLP finding, auth failure).
func severity(ev api.AuditEvent) int {
	switch {
	case ev.Type == TypeEgressDLP || ev.Type == TypeAuthFailure:
		return 4
	case ev.Verdict == VerdictBlock || ev.Verdict == VerdictError || ev.Verdict == VerdictDeny:
		return 3
	}
	return 1
}

// httpActivity maps a method to OCSF HTTP Activity's activity_id.
var httpActivity = map[string]int{"CONNECT": 1, "DELETE": 2, "GET": 3, "HEAD": 4, "OPTIONS": 5, "POST": 6, "PUT": 7, "TRACE": 8, "PATCH": 9}

func ocsf(ev api.AuditEvent) ([]byte, error) {
	t, _ := time.Parse(time.RFC3339Nano, ev.Time)
	o := map[string]any{
		"time":        t.UnixMilli(),
		"severity_id": severity(ev),
		"message":     ev.Type + " " + ev.Verdict,
		"metadata": map[string]any{"version": "1.3.0", "uid": ev.ID, "sequence": ev.Seq,
			"product": map[string]any{"name": Product, "vendor_name": Product, "version": Version}},
		"actor":       map[string]any{"user": map[string]any{"uid": ev.Actor}},
		"unmapped":    map[string]any{"type": ev.Type, "session": ev.Session, "sandbox": ev.Sandbox, "tier": ev.Tier, "hash": ev.Hash, "prev_hash": ev.PrevHash, "details": ev.Details},
		"status":      ev.Verdict,
		"disposition": disposition(ev.Verdict),
	}
	d := ev.Details
	switch {
	case strings.HasPrefix(ev.Type, "egress."):
		method := strings.ToUpper(str(d, "method"))
		act, ok := httpActivity[method]
		if !ok {
			act = 99
		}
		o["category_uid"], o["class_uid"], o["activity_id"], o["type_uid"] = 4, 4002, act, 4002*100+act
		o["http_request"] = map[string]any{"http_method": method, "url": map[string]any{"hostname": str(d, "host"), "path": str(d, "path")}}
		if code := str(d, "status"); code != "" {
			o["http_response"] = map[string]any{"code": d["status"]}
		}
		o["dst_endpoint"] = map[string]any{"hostname": str(d, "host"), "port": d["port"]}
		o["src_endpoint"] = map[string]any{"uid": ev.Sandbox}
	case ev.Type == TypeAuthFailure:
		o["category_uid"], o["class_uid"], o["activity_id"], o["type_uid"] = 3, 3002, 1, 300201
		o["status_id"] = 2 // failure
		o["src_endpoint"] = map[string]any{"ip": str(d, "remote")}
	default:
		// API Activity: create 1, read 2, update 3, delete 4, other 99.
		act := 99
		switch ev.Type {
		case TypeSessionCreate, TypeFileUpload, TypePackageInstall, TypeSessionFork:
			act = 1
		case TypeFileDownload:
			act = 2
		case TypeSessionMove, TypePolicyChange, TypeSessionRewind, TypeStepPin:
			act = 3
		case TypeSessionClose, TypeSessionExpire, TypeRetention:
			act = 4
		}
		o["category_uid"], o["class_uid"], o["activity_id"], o["type_uid"] = 6, 6003, act, 6003*100+act
		o["api"] = map[string]any{"operation": ev.Type}
	}
	return json.Marshal(o)
}

// disposition is OCSF's disposition for a verdict.
func disposition(v string) string {
	switch v {
	case VerdictAllow, VerdictOK:
		return "Allowed"
	case VerdictBlock, VerdictDeny:
		return "Blocked"
	case VerdictRedact:
		return "Modified"
	}
	return "Error"
}

var (
	cefHeader    = strings.NewReplacer(`\`, `\\`, `|`, `\|`, "\n", " ", "\r", " ")
	cefExtension = strings.NewReplacer(`\`, `\\`, `=`, `\=`, "\n", `\n`, "\r", `\r`)
)

func cef(ev api.AuditEvent) string {
	t, _ := time.Parse(time.RFC3339Nano, ev.Time)
	d := ev.Details
	ext := [][2]string{{"rt", strconv.FormatInt(t.UnixMilli(), 10)}, {"externalId", ev.ID}, {"suser", ev.Actor},
		{"act", ev.Verdict}, {"outcome", disposition(ev.Verdict)},
		{"cs1Label", "session"}, {"cs1", ev.Session}, {"cs2Label", "sandbox"}, {"cs2", ev.Sandbox},
		{"cs3Label", "tier"}, {"cs3", ev.Tier}, {"cs4Label", "hash"}, {"cs4", ev.Hash},
		{"cn1Label", "seq"}, {"cn1", strconv.FormatInt(ev.Seq, 10)}}
	for _, kv := range [][2]string{{"dhost", "host"}, {"dpt", "port"}, {"requestMethod", "method"}, {"request", "path"},
		{"src", "remote"}, {"fname", "path"}, {"fsize", "size"}, {"reason", "reason"}, {"cs5", "rule"}, {"cs6", "error_type"}} {
		if v := str(d, kv[1]); v != "" {
			if kv[0] == "request" && !strings.HasPrefix(ev.Type, "egress.") {
				continue
			}
			if kv[0] == "fname" && strings.HasPrefix(ev.Type, "egress.") {
				continue
			}
			ext = append(ext, [2]string{kv[0], v})
			switch kv[0] {
			case "cs5":
				ext = append(ext, [2]string{"cs5Label", "rule"})
			case "cs6":
				ext = append(ext, [2]string{"cs6Label", "error_type"})
			}
		}
	}
	if strings.HasPrefix(ev.Type, "egress.") {
		if h, p := str(d, "host"), str(d, "path"); h != "" {
			ext = append(ext, [2]string{"request", "https://" + h + p})
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "CEF:0|%s|%s|%s|%s|%s|%d|", cefHeader.Replace(Product), cefHeader.Replace(Product), cefHeader.Replace(Version),
		cefHeader.Replace(ev.Type), cefHeader.Replace(ev.Type+" "+ev.Verdict), severity(ev)*2+1)
	first := true
	for _, kv := range ext {
		if kv[1] == "" {
			continue
		}
		if !first {
			b.WriteByte(' ')
		}
		first = false
		b.WriteString(kv[0])
		b.WriteByte('=')
		b.WriteString(cefExtension.Replace(kv[1]))
	}
	return b.String()
}
