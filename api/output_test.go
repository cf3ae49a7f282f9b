package api

import (
	"encoding/json"
	"errors"
	"testing"
)

const sample = `{"results": [
 {"type": "display_data", "data": {"text/plain": "<Figure>", "image/png": "iVBORw0KGgo=", "image/svg+xml": "<svg/>",
  "application/vnd.agentbox.chart+json": {"type": "bar", "title": "T", "x_axis": {"label": "k", "scale": "linear"},
   "series": [{"kind": "bar", "label": "", "x": ["a", "b"], "y": [1, 2], "points": 2}]}}, "is_main_result": false},
 {"type": "execute_result", "data": {"text/plain": "df", "text/html": "<table/>", "text/markdown": "# m",
  "application/json": {"k": 1},
  "application/vnd.dataresource+json": {"schema": {"fields": [{"name": "index", "type": "integer"}, {"name": "n|ame", "type": "string"}], "primaryKey": ["index"]},
   "data": [{"index": 0, "n|ame": "x\ny"}, {"index": 1, "n|ame": null}]}}, "metadata": {"agentbox_truncated": ["text/html"]}, "is_main_result": true}
]}`

// TestOutputHelpers: the typed helpers read each representation, and say when there is none.
func TestOutputHelpers(t *testing.T) {
	var res Result
	if err := json.Unmarshal([]byte(sample), &res); err != nil {
		t.Fatal(err)
	}
	fig, df := &res.Results[0], res.MainResult()
	if df != &res.Results[1] {
		t.Fatal("MainResult is not the execute_result")
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"Text", fig.Text(), "<Figure>"},
		{"PNG", string(fig.PNG()), "\x89PNG\r\n\x1a\n"},
		{"SVG", fig.SVG(), "<svg/>"},
		{"no JPEG", fig.JPEG() == nil, true},
		{"HTML", df.HTML(), "<table/>"},
		{"Markdown", df.Markdown(), "# m"},
		{"JSON", string(df.JSON()), `{"k": 1}`},
		{"no HTML", fig.HTML(), ""},
		{"Truncated", df.Truncated(), true},
		{"not Truncated", fig.Truncated(), false},
		{"Has", fig.Has(MIMEChart) && !df.Has(MIMEChart), true},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if c.got != c.want {
				t.Fatalf("%v, want %v", c.got, c.want)
			}
		})
	}
	t.Run("Chart", func(t *testing.T) {
		c, err := fig.Chart()
		if err != nil || c.Type != "bar" || c.Title != "T" || c.XAxis.Label != "k" || len(c.Series) != 1 || c.Series[0].X[1] != "b" || c.Series[0].Y[1] != 2.0 {
			t.Fatalf("%+v %v", c, err)
		}
		if _, err := df.Chart(); !errors.Is(err, ErrNoData) {
			t.Fatalf("a DataFrame's chart: %v", err)
		}
	})
	t.Run("Table and Markdown", func(t *testing.T) {
		tb, err := df.Table()
		if err != nil || len(tb.Schema.Fields) != 2 || len(tb.Data) != 2 {
			t.Fatalf("%+v %v", tb, err)
		}
		want := "| index | n\\|ame |\n| --- | --- |\n| 0 | x y |\n| 1 |  |\n"
		if md := tb.Markdown(); md != want {
			t.Fatalf("%q, want %q", md, want)
		}
		if _, err := fig.Table(); !errors.Is(err, ErrNoData) {
			t.Fatalf("a figure's table: %v", err)
		}
	})
	t.Run("no main result", func(t *testing.T) {
		if (&Result{Results: res.Results[:1]}).MainResult() != nil {
			t.Fatal("a display_data taken for the main result")
		}
	})
}
