package e2b

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

func raw(v any) json.RawMessage { b, _ := json.Marshal(v); return b }

func TestResultLineMapsMIMETypesToE2BKeys(t *testing.T) {
	chart := api.Chart{Type: "line", Title: "t", XAxis: &api.ChartAxis{Label: "x", Scale: "linear"}, YAxis: &api.ChartAxis{Label: "y", Scale: "log"},
		Series: []api.ChartSeries{{Kind: "line", Label: "s", X: []any{1.0, 2.0}, Y: []any{3.0, 4.0}}}}
	table := api.Table{Schema: api.TableSchema{Fields: []api.TableField{{Name: "a", Type: "integer"}, {Name: "b", Type: "string"}}},
		Data: []map[string]any{{"a": 1.0, "b": "x"}, {"a": 2.0, "b": "y"}}}
	for _, tc := range []struct {
		name string
		out  api.Output
		want map[string]any
	}{
		{"text main result, quotes stripped", api.Output{IsMainResult: true, Data: map[string]json.RawMessage{"text/plain": raw("'abc'")}},
			map[string]any{"type": "result", "is_main_result": true, "text": "abc"}},
		{"only one pair of quotes", api.Output{Data: map[string]json.RawMessage{"text/plain": raw(`"'a'"`)}},
			map[string]any{"type": "result", "is_main_result": false, "text": `"'a'"`}},
		{"every known MIME key", api.Output{Data: map[string]json.RawMessage{
			"text/html": raw("<b>"), "text/markdown": raw("*m*"), "image/svg+xml": raw("<svg/>"), "image/png": raw("UE5H"),
			"image/jpeg": raw("/9j/"), "application/pdf": raw("JVBE"), "text/latex": raw("$x$"), "application/json": raw(map[string]int{"k": 1}),
			"application/javascript": raw("alert(1)")}},
			map[string]any{"type": "result", "is_main_result": false, "html": "<b>", "markdown": "*m*", "svg": "<svg/>", "png": "UE5H",
				"jpeg": "/9j/", "pdf": "JVBE", "latex": "$x$", "json": map[string]any{"k": 1.0}, "javascript": "alert(1)"}},
		{"a DataFrame is data, by column", api.Output{Data: map[string]json.RawMessage{api.MIMETable: raw(table)}},
			map[string]any{"type": "result", "is_main_result": false, "data": map[string]any{"a": []any{1.0, 2.0}, "b": []any{"x", "y"}}}},
		{"a chart in E2B's shape", api.Output{Data: map[string]json.RawMessage{api.MIMEChart: raw(chart)}},
			map[string]any{"type": "result", "is_main_result": false, "chart": map[string]any{"type": "line", "title": "t", "x_label": "x",
				"x_scale": "linear", "y_label": "y", "y_scale": "log", "elements": []any{map[string]any{"label": "s", "points": []any{[]any{1.0, 3.0}, []any{2.0, 4.0}}}}}}},
		{"other MIME types are extra", api.Output{Data: map[string]json.RawMessage{api.MIMEPlotly: raw(map[string]any{"data": []any{}})}},
			map[string]any{"type": "result", "is_main_result": false, "extra": map[string]any{api.MIMEPlotly: map[string]any{"data": []any{}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got map[string]any
			json.Unmarshal(raw(resultLine(tc.out)), &got)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestChartJSONKinds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		chart api.Chart
		want  string
	}{
		{"bar elements are label, group, value", api.Chart{Type: "bar", Series: []api.ChartSeries{{Label: "g", X: []any{"a", 2.0}, Y: []any{1.0, 5.0}}}},
			`{"elements":[{"group":"g","label":"a","value":1},{"group":"g","label":"2","value":5}],"title":"","type":"bar"}`},
		{"pie elements are label and angle", api.Chart{Type: "pie", Series: []api.ChartSeries{{Labels: []string{"a", "b"}, Fractions: []float64{0.25, 0.75}}}},
			`{"elements":[{"angle":90,"label":"a","radius":1},{"angle":270,"label":"b","radius":1}],"title":"","type":"pie"}`},
		{"several axes are a superchart", api.Chart{Type: "composite", Charts: []api.Chart{{Type: "scatter", Title: "s"}}},
			`{"elements":[{"elements":[],"title":"s","type":"scatter"}],"title":"","type":"superchart"}`},
		{"mixed kinds are unknown", api.Chart{Type: "mixed"}, `{"elements":[],"title":"","type":"unknown"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(raw(chartJSON(tc.chart))); got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}
