package e2b

import (
	"encoding/json"
	"strings"

	"github.com/entersandbox/agentbox/api"
)

// e2bKeys maps the MIME types of an agentbox output (api.Output) to the keys of E2B's result line.
var e2bKeys = map[string]string{
	"text/plain":             "text",
	"text/html":              "html",
	"text/markdown":          "markdown",
	"image/svg+xml":          "svg",
	"image/png":              "png",
	"image/jpeg":             "jpeg",
	"application/pdf":        "pdf",
	"text/latex":             "latex",
	"application/json":       "json",
	"application/javascript": "javascript",
	api.MIMETable:            "data",
}

// resultLine is one rich output as E2B's {"type":"result", ...} line: the known MIME types under
// E2B's keys (text is the repr, with one pair of surrounding quotes stripped as E2B's server does),
// the extracted chart in E2B's chart shape, and every other MIME type under extra.
func resultLine(o api.Output) map[string]any {
	line := map[string]any{"type": "result", "is_main_result": o.IsMainResult}
	extra := map[string]json.RawMessage{}
	for mime, raw := range o.Data {
		switch key, ok := e2bKeys[mime]; {
		case mime == "text/plain":
			text := o.Text()
			if len(text) >= 2 && text[0] == '\'' && text[len(text)-1] == '\'' {
				text = text[1 : len(text)-1]
			}
			line["text"] = text
		case mime == api.MIMETable:
			var t api.Table
			if json.Unmarshal(raw, &t) == nil {
				line["data"] = tableData(t)
			}
		case mime == api.MIMEChart:
			if c, err := o.Chart(); err == nil {
				line["chart"] = chartJSON(*c)
			}
		case ok:
			line[key] = raw
		default:
			extra[mime] = raw
		}
	}
	if len(extra) > 0 {
		line["extra"] = extra
	}
	return line
}

// tableData is a DataFrame as E2B's data key holds it: column name to the column's values.
func tableData(t api.Table) map[string][]any {
	out := map[string][]any{}
	for _, f := range t.Schema.Fields {
		col := make([]any, len(t.Data))
		for i, row := range t.Data {
			col[i] = row[f.Name]
		}
		out[f.Name] = col
	}
	return out
}

// chartJSON is an agentbox chart in E2B's chart shape: type, title, axis labels and scales, and
// elements (points for line and scatter, label/group/value for bar, label/angle for pie); several
// Axes are a superchart of charts. A chart mixing kinds on one Axes is E2B's "unknown".
func chartJSON(c api.Chart) map[string]any {
	out := map[string]any{"title": c.Title}
	if c.XAxis != nil {
		out["x_label"], out["x_scale"] = c.XAxis.Label, c.XAxis.Scale
	}
	if c.YAxis != nil {
		out["y_label"], out["y_scale"] = c.YAxis.Label, c.YAxis.Scale
	}
	elements := []any{}
	switch c.Type {
	case "composite":
		out["type"] = "superchart"
		for _, sub := range c.Charts {
			elements = append(elements, chartJSON(sub))
		}
	case "line", "scatter":
		out["type"] = c.Type
		for _, s := range c.Series {
			points := make([][2]any, 0, len(s.X))
			for i := range min(len(s.X), len(s.Y)) {
				points = append(points, [2]any{s.X[i], s.Y[i]})
			}
			elements = append(elements, map[string]any{"label": s.Label, "points": points})
		}
	case "bar":
		out["type"] = "bar"
		for _, s := range c.Series {
			for i := range min(len(s.X), len(s.Y)) {
				elements = append(elements, map[string]any{"label": asLabel(s.X[i]), "group": s.Label, "value": s.Y[i]})
			}
		}
	case "pie":
		out["type"] = "pie"
		for _, s := range c.Series {
			for i := range min(len(s.Labels), len(s.Fractions)) {
				elements = append(elements, map[string]any{"label": s.Labels[i], "angle": s.Fractions[i] * 360, "radius": 1})
			}
		}
	default:
		out["type"] = "unknown"
	}
	out["elements"] = elements
	return out
}

func asLabel(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return strings.Trim(string(b), `"`)
}
