package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"strings"

	"github.com/entersandbox/agentbox/api"
)

// Report formats.
const (
	ReportJSON     = "json"
	ReportMarkdown = "md"
	ReportHTML     = "html"
)

// Render writes a report as JSON, Markdown or a self-contained HTML page (inline CSS and SVG charts,
// nothing fetched), and says its content type.
func Render(rep api.AuditReport, format string) ([]byte, string, error) {
	switch format {
	case ReportJSON, "":
		b, err := json.MarshalIndent(rep, "", "  ")
		return append(b, '\n'), "application/json", err
	case ReportMarkdown:
		return markdown(rep), "text/markdown; charset=utf-8", nil
	case ReportHTML:
		var b bytes.Buffer
		if err := page.Execute(&b, pageData(rep)); err != nil {
			return nil, "", fmt.Errorf("audit: rendering the report: %w", err)
		}
		return b.Bytes(), "text/html; charset=utf-8", nil
	}
	return nil, "", invalid("report format %q: want json, md or html", format)
}

var mdCell = strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ")

func markdown(r api.AuditReport) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# agentbox audit report: %s, %s to %s\n\n", r.Period, r.Start, r.End)
	fmt.Fprintf(&b, "Generated %s. %d events, %d authentication failures.\n\n", r.GeneratedAt, r.Events, r.AuthFailures)
	chain := func(v api.AuditVerification, verified, notVerified string) {
		if v.OK {
			fmt.Fprintf(&b, "%s over events %d to %d (%d events, %d signed checkpoints).", verified, v.FirstSeq, v.LastSeq, v.Events, v.Checkpoints)
		} else {
			fmt.Fprintf(&b, "%s: %s", notVerified, mdCell.Replace(v.Problem))
			if v.BadSeq > 0 {
				fmt.Fprintf(&b, " (first bad event: seq %d %s)", v.BadSeq, v.BadEventID)
			}
		}
		if cp := v.LastCheckpoint; cp != nil {
			fmt.Fprintf(&b, " Last checkpoint: seq %d, head `%s`, %s, key %s, signature `%s`.", cp.Seq, cp.Head, cp.Time, cp.KeyID, cp.Signature)
		}
	}
	if len(r.Hosts) == 0 {
		chain(r.Verification, "**Chain verified**", "**Chain NOT verified**")
	} else {
		// A fleet's report: each host's log has its own chain.
		fmt.Fprintf(&b, "Fleet of %d hosts answering", len(r.Hosts))
		if len(r.HostsMissing) > 0 {
			fmt.Fprintf(&b, "; **not counted, not verified** (did not answer): %s", mdCell.Replace(strings.Join(r.HostsMissing, ", ")))
		}
		b.WriteString(".\n\n")
		for _, h := range r.Hosts {
			fmt.Fprintf(&b, "- **%s**: %d events, ", mdCell.Replace(h.Host), h.Events)
			chain(h.Verification, "chain verified", "chain NOT verified")
			b.WriteString("\n")
		}
	}
	b.WriteString("\n\n")
	table := func(title, col string, rows []api.AuditCount) {
		fmt.Fprintf(&b, "## %s\n\n", title)
		if len(rows) == 0 {
			b.WriteString("None.\n\n")
			return
		}
		fmt.Fprintf(&b, "| %s | Count |\n|---|---:|\n", col)
		for _, c := range rows {
			fmt.Fprintf(&b, "| %s | %d |\n", mdCell.Replace(c.Key), c.Count)
		}
		b.WriteString("\n")
	}
	table("By verdict", "Verdict", r.ByVerdict)
	table("By type", "Type", r.ByType)
	table("By tier", "Tier", r.ByTier)
	table("By API key", "Key", r.ByActor)
	table("By session", "Session", r.BySession)
	table("Top blocked destinations", "Host", r.TopBlocked)
	b.WriteString("## Hosts contacted for the first time\n\n")
	if len(r.NewHosts) == 0 {
		b.WriteString("None.\n\n")
	}
	for _, h := range r.NewHosts {
		fmt.Fprintf(&b, "- %s\n", mdCell.Replace(h))
	}
	if len(r.NewHosts) > 0 {
		b.WriteString("\n")
	}
	table("DLP findings by detector (counts only)", "Detector", r.DLPFindings)
	table("Errors and limits hit", "Error type", r.Errors)
	b.WriteString("## Policy changes\n\n")
	if len(r.PolicyChanges) == 0 {
		b.WriteString("None.\n\n")
	}
	for _, e := range r.PolicyChanges {
		d, _ := json.Marshal(e.Details)
		fmt.Fprintf(&b, "- %s by %s (seq %d): `%s`\n", e.Time, mdCell.Replace(e.Actor), e.Seq, strings.ReplaceAll(string(d), "`", "'"))
	}
	b.WriteString("\n## Events and blocked requests per hour\n\n| Hour | Events | Blocked |\n|---:|---:|---:|\n")
	for h := range r.EventsPerHour {
		if r.EventsPerHour[h] > 0 {
			fmt.Fprintf(&b, "| %d | %d | %d |\n", h, r.EventsPerHour[h], r.BlockedPerHour[h])
		}
	}
	return b.Bytes()
}

type bar struct {
	X, Y, W, H float64
	Label      string
	Title      string
}

type chart struct {
	Title  string
	Width  float64
	Height float64
	Bars   []bar
	Max    int64
	Color  string
	Axis   []bar // tick labels
}

// hourChart draws one bar per hour.
func hourChart(title, color string, counts []int64) chart {
	const w, h, pad = 720.0, 160.0, 20.0
	c := chart{Title: title, Width: w, Height: h + pad*2, Color: color}
	for _, n := range counts {
		c.Max = max(c.Max, n)
	}
	if len(counts) == 0 {
		return c
	}
	bw := (w - pad) / float64(len(counts))
	for i, n := range counts {
		bh := 0.0
		if c.Max > 0 {
			bh = float64(n) / float64(c.Max) * h
		}
		x := pad + float64(i)*bw
		c.Bars = append(c.Bars, bar{X: x, Y: pad + h - bh, W: max(bw-1, 1), H: bh, Title: fmt.Sprintf("hour %d: %d", i, n)})
		step := 6
		if len(counts) > 48 {
			step = 24
		}
		if i%step == 0 {
			c.Axis = append(c.Axis, bar{X: x, Y: pad + h + 14, Label: fmt.Sprint(i)})
		}
	}
	return c
}

// countChart draws horizontal bars for a report's counts.
func countChart(title, color string, rows []api.AuditCount) chart {
	const w, rowH, labelW = 720.0, 22.0, 220.0
	c := chart{Title: title, Width: w, Height: rowH*float64(len(rows)) + 10, Color: color}
	for _, r := range rows {
		c.Max = max(c.Max, r.Count)
	}
	for i, r := range rows {
		bw := 0.0
		if c.Max > 0 {
			bw = float64(r.Count) / float64(c.Max) * (w - labelW - 60)
		}
		y := float64(i) * rowH
		c.Bars = append(c.Bars, bar{X: labelW, Y: y + 4, W: max(bw, 1), H: rowH - 6, Label: r.Key, Title: fmt.Sprintf("%s: %d", r.Key, r.Count)})
	}
	return c
}

type pageView struct {
	R      api.AuditReport
	Charts []chart
}

func pageData(r api.AuditReport) pageView {
	v := pageView{R: r}
	v.Charts = append(v.Charts, hourChart("Blocked requests per hour", "#c0392b", r.BlockedPerHour), hourChart("Events per hour", "#2c7fb8", r.EventsPerHour))
	if len(r.ByVerdict) > 0 {
		v.Charts = append(v.Charts, countChart("Events by verdict", "#555", r.ByVerdict))
	}
	if len(r.TopBlocked) > 0 {
		v.Charts = append(v.Charts, countChart("Top blocked destinations", "#c0392b", r.TopBlocked))
	}
	if len(r.DLPFindings) > 0 {
		v.Charts = append(v.Charts, countChart("DLP findings by detector", "#8e44ad", r.DLPFindings))
	}
	return v
}

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"json": func(v any) string { b, _ := json.Marshal(v); return string(b) },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>agentbox audit report: {{.R.Period}} {{.R.Start}}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:780px;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}td,th{border-bottom:1px solid #ddd;padding:2px 10px;text-align:left}
td.n{text-align:right}.ok{color:#1a7f37;font-weight:600}.bad{color:#c0392b;font-weight:600}
code{font-size:12px;word-break:break-all}svg text{font-size:11px;fill:#444}
</style></head><body>
<h1>agentbox audit report: {{.R.Period}}</h1>
<p>{{.R.Start}} to {{.R.End}} &middot; generated {{.R.GeneratedAt}} &middot; {{.R.Events}} events &middot; {{.R.AuthFailures}} authentication failures</p>
{{with .R.Verification}}{{if .OK}}<p class="ok">Chain verified over events {{.FirstSeq}} to {{.LastSeq}} ({{.Events}} events, {{.Checkpoints}} signed checkpoints).</p>
{{else}}<p class="bad">Chain NOT verified: {{.Problem}}{{if .BadSeq}} (first bad event: seq {{.BadSeq}} {{.BadEventID}}){{end}}</p>{{end}}
{{with .LastCheckpoint}}<p>Last checkpoint: seq {{.Seq}}, {{.Time}}, key {{.KeyID}}<br>head <code>{{.Head}}</code><br>signature <code>{{.Signature}}</code></p>{{end}}{{end}}
{{if .R.Hosts}}<h2>Hosts (each has its own chain)</h2><ul>{{range .R.Hosts}}<li>{{.Host}}: {{.Events}} events, {{with .Verification}}{{if .OK}}<span class="ok">chain verified</span> over events {{.FirstSeq}} to {{.LastSeq}}{{else}}<span class="bad">chain NOT verified</span>: {{.Problem}}{{end}}{{end}}</li>{{end}}</ul>
{{if .R.HostsMissing}}<p class="bad">Not counted, not verified (did not answer): {{range $i, $h := .R.HostsMissing}}{{if $i}}, {{end}}{{$h}}{{end}}</p>{{end}}{{end}}
{{range .Charts}}<h2>{{.Title}}</h2>
<svg xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" viewBox="0 0 {{.Width}} {{.Height}}" role="img" aria-label="{{.Title}}">
{{$c := .}}{{range .Bars}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="{{$c.Color}}"><title>{{.Title}}</title></rect>{{if .Label}}<text x="{{.X}}" y="{{.Y}}" dx="-6" dy="12" text-anchor="end">{{.Label}}</text>{{end}}
{{end}}{{range .Axis}}<text x="{{.X}}" y="{{.Y}}">{{.Label}}</text>{{end}}<text x="{{.Width}}" y="12" text-anchor="end">max {{.Max}}</text>
</svg>
{{end}}
{{define "counts"}}{{if .}}<table><tr><th>Name</th><th>Count</th></tr>{{range .}}<tr><td>{{.Key}}</td><td class="n">{{.Count}}</td></tr>{{end}}</table>{{else}}<p>None.</p>{{end}}{{end}}
<h2>By type</h2>{{template "counts" .R.ByType}}
<h2>By tier</h2>{{template "counts" .R.ByTier}}
<h2>By API key</h2>{{template "counts" .R.ByActor}}
<h2>By session</h2>{{template "counts" .R.BySession}}
<h2>Hosts contacted for the first time</h2>{{if .R.NewHosts}}<ul>{{range .R.NewHosts}}<li>{{.}}</li>{{end}}</ul>{{else}}<p>None.</p>{{end}}
<h2>Errors and limits hit</h2>{{template "counts" .R.Errors}}
<h2>Policy changes</h2>{{if .R.PolicyChanges}}<ul>{{range .R.PolicyChanges}}<li>{{.Time}} by {{.Actor}} (seq {{.Seq}}): <code>{{json .Details}}</code></li>{{end}}</ul>{{else}}<p>None.</p>{{end}}
</body></html>
`))
