package console

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
)

// Everything a guest produced is untrusted here: its HTML could read the key from sessionStorage if
// it ran in the console's origin. So guest HTML goes into a sandboxed srcdoc frame (no scripts, an
// opaque origin), SVG into an <img> (scripts in an image never run), plotly and vega specs into the
// sandboxed chart frame, and everything else is escaped text built with html/template.

// Limits of what an inspector shows inline.
const (
	maxJSONNodes  = 2000    // a JSON tree stops (with a note) after this many values
	maxTableRows  = 200     // rows of a DataFrame's table shown
	maxInlineFile = 2 << 20 // a file viewer shows at most this much of a file
	maxCSVRows    = 500
)

var funcs = template.FuncMap{
	"highlight": highlightPython,
	"output":    renderOutput,
	"age":       age,
	"bytes":     humanBytes,
	"ms":        func(ms float64) string { return fmtMS(ms) },
	"outcome":   stepOutcome,
	"esc":       url.PathEscape,
	"query":     url.QueryEscape,
	"json":      jsonTree,
	"add":       func(a, b int) int { return a + b },
	"len64":     func(b []byte) int64 { return int64(len(b)) },
	"marshal":   func(v any) json.RawMessage { b, _ := json.Marshal(v); return b },
	"dict":      dict,
}

// outputKinds are the representations the console renders, best first.
var outputKinds = []string{api.MIMETable, api.MIMEPlotly, "vega", "text/html", "image/svg+xml", "image/png",
	"image/jpeg", "application/json", "text/markdown", "text/latex", "text/plain"}

// renderOutput renders the best representation of one rich output.
func renderOutput(o api.Output) template.HTML {
	var b strings.Builder
	kind := bestKind(o)
	fmt.Fprintf(&b, `<figure class="output" data-mime="%s">`, template.HTMLEscapeString(kind))
	switch kind {
	case api.MIMETable:
		t, err := o.Table()
		if err != nil {
			b.WriteString(preText("table: " + err.Error()))
			break
		}
		b.WriteString(renderTable(t))
	case api.MIMEPlotly, "vega":
		mime := kind
		if kind == "vega" {
			mime = vegaMIME(o)
		}
		spec := o.Data[mime]
		lib := "plotly"
		if kind == "vega" {
			lib = "vega"
			if strings.Contains(mime, "vegalite") {
				lib = "vega-lite"
			}
		}
		fmt.Fprintf(&b, `<iframe class="chart-frame" sandbox="allow-scripts" src="/ui/static/chart.html" title="%s chart" data-lib="%s" data-spec="%s"></iframe>`,
			lib, lib, template.HTMLEscapeString(string(spec)))
	case "text/html":
		fmt.Fprintf(&b, `<iframe class="html-output" sandbox="" title="HTML output" srcdoc="%s"></iframe>`, template.HTMLEscapeString(htmlFrameDoc(o.HTML())))
	case "image/svg+xml":
		fmt.Fprintf(&b, `<img class="chart" alt="%s" src="data:image/svg+xml;base64,%s">`, template.HTMLEscapeString(altText(o, "SVG image")),
			base64.StdEncoding.EncodeToString([]byte(o.SVG())))
	case "image/png", "image/jpeg":
		data := o.PNG()
		if kind == "image/jpeg" {
			data = o.JPEG()
		}
		if data == nil {
			b.WriteString(preText(kind + ": not valid base64"))
			break
		}
		fmt.Fprintf(&b, `<img class="chart" alt="%s" src="data:%s;base64,%s">`, template.HTMLEscapeString(altText(o, "image")), kind,
			base64.StdEncoding.EncodeToString(data))
	case "application/json":
		b.WriteString(string(jsonTree(o.JSON())))
	case "":
		b.WriteString(`<p class="muted">(an output with no representation the console shows)</p>`)
	default:
		b.WriteString(preText(o.TextOf(kind)))
	}
	if o.Truncated() {
		b.WriteString(`<figcaption class="warn">cut by the result caps (max_result_bytes)</figcaption>`)
	}
	if c, err := o.Chart(); err == nil {
		b.WriteString(`<details class="chart-data"><summary>chart data (` + template.HTMLEscapeString(c.Type) + `)</summary>`)
		b.WriteString(string(jsonTree(o.Data[api.MIMEChart])))
		b.WriteString(`</details>`)
	}
	b.WriteString(`</figure>`)
	return template.HTML(b.String())
}

func bestKind(o api.Output) string {
	for _, k := range outputKinds {
		if k == "vega" {
			if vegaMIME(o) != "" {
				return k
			}
			continue
		}
		if o.Has(k) {
			return k
		}
	}
	return ""
}

// vegaMIME is the output's vega or vega-lite MIME type (application/vnd.vegalite.v5+json...), "" when
// it has none.
func vegaMIME(o api.Output) string {
	keys := make([]string, 0, len(o.Data))
	for k := range o.Data {
		if strings.HasPrefix(k, "application/vnd.vegalite.") || strings.HasPrefix(k, "application/vnd.vega.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		return ""
	}
	return keys[len(keys)-1]
}

func altText(o api.Output, fallback string) string {
	if t := o.Text(); t != "" {
		return t
	}
	return fallback
}

// htmlFrameDoc wraps guest HTML for its frame: readable defaults, nothing loaded from anywhere.
func htmlFrameDoc(h string) string {
	return `<!doctype html><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">` +
		`<style>body{font:13px system-ui,sans-serif;margin:4px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>` + h
}

func preText(s string) string {
	return `<pre class="text">` + template.HTMLEscapeString(s) + `</pre>`
}

// renderTable renders a DataFrame's Table, its first maxTableRows rows.
func renderTable(t *api.Table) string {
	var b strings.Builder
	b.WriteString(`<div class="table-wrap"><table class="data"><thead><tr>`)
	for _, f := range t.Schema.Fields {
		fmt.Fprintf(&b, `<th title="%s">%s</th>`, template.HTMLEscapeString(f.Type), template.HTMLEscapeString(f.Name))
	}
	b.WriteString(`</tr></thead><tbody>`)
	for i, row := range t.Data {
		if i == maxTableRows {
			break
		}
		b.WriteString(`<tr>`)
		for _, f := range t.Schema.Fields {
			b.WriteString(`<td>` + template.HTMLEscapeString(cellText(row[f.Name])) + `</td>`)
		}
		b.WriteString(`</tr>`)
	}
	b.WriteString(`</tbody></table>`)
	if len(t.Data) > maxTableRows {
		fmt.Fprintf(&b, `<p class="muted">first %d of %d rows</p>`, maxTableRows, len(t.Data))
	}
	b.WriteString(`</div>`)
	return b.String()
}

func cellText(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1e15 {
			return fmt.Sprintf("%.0f", v)
		}
		return fmt.Sprint(v)
	default:
		j, _ := json.Marshal(v)
		return string(j)
	}
}

// jsonTree renders JSON as nested <details> (objects and arrays open to two levels), at most
// maxJSONNodes values.
func jsonTree(raw json.RawMessage) template.HTML {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return template.HTML(preText("not valid JSON: " + err.Error()))
	}
	var b strings.Builder
	n := 0
	b.WriteString(`<div class="json-tree">`)
	writeJSONNode(&b, "", v, 0, &n)
	b.WriteString(`</div>`)
	return template.HTML(b.String())
}

func writeJSONNode(b *strings.Builder, key string, v any, depth int, n *int) {
	*n++
	if *n > maxJSONNodes {
		if *n == maxJSONNodes+1 {
			b.WriteString(`<div class="muted">… (more values not shown)</div>`)
		}
		return
	}
	label := ""
	if key != "" {
		label = `<span class="json-key">` + template.HTMLEscapeString(key) + `</span>: `
	}
	open := ""
	if depth < 2 {
		open = " open"
	}
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(b, `<details%s><summary>%s{…} <span class="muted">%d keys</span></summary>`, open, label, len(v))
		for _, k := range keys {
			writeJSONNode(b, k, v[k], depth+1, n)
		}
		b.WriteString(`</details>`)
	case []any:
		fmt.Fprintf(b, `<details%s><summary>%s[…] <span class="muted">%d items</span></summary>`, open, label, len(v))
		for i, e := range v {
			writeJSONNode(b, fmt.Sprint(i), e, depth+1, n)
		}
		b.WriteString(`</details>`)
	case string:
		var j bytes.Buffer
		enc := json.NewEncoder(&j)
		enc.SetEscapeHTML(false) // escaped for HTML below, readable as JSON
		enc.Encode(v)
		b.WriteString(`<div>` + label + `<span class="json-str">` + template.HTMLEscapeString(strings.TrimSuffix(j.String(), "\n")) + `</span></div>`)
	case nil:
		b.WriteString(`<div>` + label + `<span class="json-null">null</span></div>`)
	default:
		b.WriteString(`<div>` + label + `<span class="json-num">` + template.HTMLEscapeString(fmt.Sprint(v)) + `</span></div>`)
	}
}

// age is how long ago an RFC 3339 time was, short ("3s", "4m", "2h", "5d").
func age(ts string) string {
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return ts
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func humanBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

func fmtMS(ms float64) string {
	if ms < 1000 {
		return fmt.Sprintf("%.1f ms", ms)
	}
	return fmt.Sprintf("%.2f s", ms/1000)
}

// stepOutcome names a step's outcome for its colour: ok, error (an exception), limit (timeout,
// memory, output, crash) or info (a start, a rewind, a fork, an upload).
func stepOutcome(s api.Step) string {
	switch {
	case s.ErrorType == api.ErrTimeout || s.ErrorType == api.ErrMemoryLimitExceeded || s.ErrorType == api.ErrOutputLimitExceeded || s.ErrorType == api.ErrGuestCrash:
		return "limit"
	case s.ErrorType != "" || s.ExitCode != 0:
		return "error"
	case s.Kind == api.StepCell || s.Kind == api.StepCommand:
		return "ok"
	}
	return "info"
}

// dict builds a map for a sub-template from key, value pairs.
func dict(kv ...any) (map[string]any, error) {
	if len(kv)%2 != 0 {
		return nil, fmt.Errorf("dict: odd number of arguments (%d)", len(kv))
	}
	m := make(map[string]any, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		k, ok := kv[i].(string)
		if !ok {
			return nil, fmt.Errorf("dict: key %v is not a string", kv[i])
		}
		m[k] = kv[i+1]
	}
	return m, nil
}
