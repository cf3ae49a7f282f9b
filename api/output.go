package api

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Output types, as in Jupyter.
const (
	// OutputExecuteResult is the value of a run's final expression (REPL semantics).
	OutputExecuteResult = "execute_result"
	// OutputDisplayData is anything passed to display(), and every matplotlib figure shown or left open.
	OutputDisplayData = "display_data"
)

// MIME types of an Output's data beyond the usual text/*, image/* and application/json.
const (
	// MIMEChart is the chart extracted from a matplotlib figure (see Chart).
	MIMEChart = "application/vnd.agentbox.chart+json"
	// MIMETable is a DataFrame as a Table Schema and its first rows (see Table).
	MIMETable = "application/vnd.dataresource+json"
	// MIMEPlotly is a plotly figure's JSON (render it with plotly.js).
	MIMEPlotly = "application/vnd.plotly.v1+json"
)

// OutputTruncatedMeta is the metadata key an Output carries when the caps cut it: its value lists the
// MIME types cut short (text, ending with TruncationMarker) or left out (binary and JSON data).
const OutputTruncatedMeta = "agentbox_truncated"

// Output is one rich result of a run, a Jupyter-style output: the value of the final expression or
// something displayed, as a bundle of representations by MIME type.
type Output struct {
	// Type is OutputExecuteResult or OutputDisplayData.
	Type string `json:"type"`
	// Data maps a MIME type to its representation: a JSON string for text types (base64 for image/png,
	// image/jpeg and application/pdf), any JSON value for application/json and the *+json types.
	Data map[string]json.RawMessage `json:"data"`
	// Metadata is per-output (figure number, DataFrame shape) and per MIME type (image width and
	// height), as the guest gave it, plus OutputTruncatedMeta.
	Metadata map[string]json.RawMessage `json:"metadata,omitempty"`
	// IsMainResult marks the execute_result: the value of the final expression statement.
	IsMainResult bool `json:"is_main_result"`
}

// Has reports whether o has a representation of the MIME type.
func (o *Output) Has(mime string) bool { _, ok := o.Data[mime]; return ok }

// TextOf returns the text representation of the MIME type, "" when o has none or it is not a string.
func (o *Output) TextOf(mime string) string {
	var s string
	if raw, ok := o.Data[mime]; ok && json.Unmarshal(raw, &s) == nil {
		return s
	}
	return ""
}

// Text is the text/plain representation.
func (o *Output) Text() string { return o.TextOf("text/plain") }

// HTML is the text/html representation.
func (o *Output) HTML() string { return o.TextOf("text/html") }

// Markdown is the text/markdown representation.
func (o *Output) Markdown() string { return o.TextOf("text/markdown") }

// SVG is the image/svg+xml representation.
func (o *Output) SVG() string { return o.TextOf("image/svg+xml") }

// PNG is the image/png representation, decoded; nil when there is none.
func (o *Output) PNG() []byte { return o.binary("image/png") }

// JPEG is the image/jpeg representation, decoded; nil when there is none.
func (o *Output) JPEG() []byte { return o.binary("image/jpeg") }

func (o *Output) binary(mime string) []byte {
	b, err := base64.StdEncoding.DecodeString(o.TextOf(mime))
	if err != nil || len(b) == 0 {
		return nil
	}
	return b
}

// JSON is the application/json representation; nil when there is none.
func (o *Output) JSON() json.RawMessage { return o.Data["application/json"] }

// Truncated reports whether the caps cut this output.
func (o *Output) Truncated() bool { _, ok := o.Metadata[OutputTruncatedMeta]; return ok }

// ErrNoData is returned by Chart and Table when the output has no such representation.
var ErrNoData = errors.New("the output has no such representation")

// Chart decodes the extracted chart (MIMEChart); ErrNoData when there is none.
func (o *Output) Chart() (*Chart, error) {
	var c Chart
	return &c, o.decode(MIMEChart, &c)
}

// Table decodes the DataFrame's table (MIMETable); ErrNoData when there is none.
func (o *Output) Table() (*Table, error) {
	var t Table
	return &t, o.decode(MIMETable, &t)
}

func (o *Output) decode(mime string, v any) error {
	raw, ok := o.Data[mime]
	if !ok {
		return ErrNoData
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decoding %s: %w", mime, err)
	}
	return nil
}

// Chart is what agentbox extracts from a simple matplotlib chart, so an agent can reason about it
// without seeing the image.
type Chart struct {
	// Type is "line", "bar", "scatter", "pie", "mixed" (several kinds on one Axes) or "composite"
	// (several Axes: Charts holds one chart each).
	Type   string        `json:"type"`
	Title  string        `json:"title"`
	XAxis  *ChartAxis    `json:"x_axis,omitempty"`
	YAxis  *ChartAxis    `json:"y_axis,omitempty"`
	Series []ChartSeries `json:"series,omitempty"`
	Charts []Chart       `json:"charts,omitempty"`
}

// ChartAxis is one axis of a Chart.
type ChartAxis struct {
	Label string `json:"label"`
	Scale string `json:"scale"` // "linear", "log"...
}

// ChartSeries is one data series: X and Y for line, bar and scatter (bar X are tick labels where the
// bars have them), Labels and Fractions for pie. At most 1000 points are kept; Points is how many the
// series has.
type ChartSeries struct {
	Kind      string    `json:"kind"`
	Label     string    `json:"label,omitempty"`
	X         []any     `json:"x,omitempty"`
	Y         []any     `json:"y,omitempty"`
	Points    int       `json:"points,omitempty"`
	Labels    []string  `json:"labels,omitempty"`
	Fractions []float64 `json:"fractions,omitempty"`
}

// Table is a DataFrame's structured table: a Table Schema and its first rows (pandas' orient="table"
// JSON, the index included as a field).
type Table struct {
	Schema TableSchema      `json:"schema"`
	Data   []map[string]any `json:"data"`
}

// TableSchema names and types a Table's fields.
type TableSchema struct {
	Fields     []TableField `json:"fields"`
	PrimaryKey []string     `json:"primaryKey,omitempty"`
}

// TableField is one column of a Table.
type TableField struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// MainResult is the value of the final expression (the execute_result), nil when there was none.
func (r *Result) MainResult() *Output {
	for i := range r.Results {
		if r.Results[i].IsMainResult {
			return &r.Results[i]
		}
	}
	return nil
}

// ArtifactContents returns the result's artifacts with their content: an artifact that refers to an
// output (a matplotlib figure, whose image is in Results) gets that output's data of its MIME type.
func (r *Result) ArtifactContents() []Artifact {
	out := make([]Artifact, 0, len(r.Artifacts))
	for _, a := range r.Artifacts {
		if a.Output != nil && *a.Output >= 0 && *a.Output < len(r.Results) && len(a.Data) == 0 {
			a.Data = r.Results[*a.Output].binary(a.MIME)
		}
		out = append(out, a)
	}
	return out
}

// Markdown renders the table as a Markdown table (the fields in schema order; "|" and newlines in
// cells escaped), for agents and chat clients that read text.
func (t *Table) Markdown() string {
	var b strings.Builder
	cell := func(v any) string {
		var s string
		switch v := v.(type) {
		case nil:
			s = ""
		case string:
			s = v
		default:
			j, _ := json.Marshal(v)
			s = string(j)
		}
		return strings.NewReplacer("|", "\\|", "\n", " ", "\r", " ").Replace(s)
	}
	b.WriteString("|")
	for _, f := range t.Schema.Fields {
		b.WriteString(" " + cell(f.Name) + " |")
	}
	b.WriteString("\n|")
	for range t.Schema.Fields {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	for _, row := range t.Data {
		b.WriteString("|")
		for _, f := range t.Schema.Fields {
			b.WriteString(" " + cell(row[f.Name]) + " |")
		}
		b.WriteString("\n")
	}
	return b.String()
}
