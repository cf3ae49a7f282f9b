package integration

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"strings"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/outputs/outputstest"
	"github.com/entersandbox/agentbox/internal/tier"
)

// TestResultsSharedCases runs the cases the nano tier runs (last-expression rules, every MIME type of
// a pure-Python object) on heavy: as cells of one session, and the script-semantics ones as runs.
func TestResultsSharedCases(t *testing.T) {
	ctx := context.Background()
	s, err := eng.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	for group, cases := range map[string][]outputstest.Case{"last expression": outputstest.LastExpression, "MIME": outputstest.MIME} {
		for _, tc := range cases {
			t.Run(group+"/"+tc.Name, func(t *testing.T) {
				var res *api.Result
				if tc.Script {
					res = run(t, api.RunRequest{Code: tc.Code, Script: true})
				} else if res, err = s.Run(ctx, tc.Code, tier.Stream{}); err != nil {
					t.Fatal(err)
				}
				outputstest.Check(t, tc, res)
			})
		}
	}
}

// figure checks that an output is a usable PNG of a matplotlib figure and returns its chart.
func figure(t *testing.T, o api.Output) *api.Chart {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(o.PNG()))
	if err != nil || img.Bounds().Dx() < 100 || o.Type != api.OutputDisplayData && !o.IsMainResult {
		t.Fatalf("not a figure: %v %v", outputstest.Keys(o.Data), err)
	}
	c, err := o.Chart()
	if err != nil {
		t.Fatalf("no chart: %v", err)
	}
	return c
}

// TestResultsMatplotlib: figures shown or left open become image/png outputs (SVG on request) with
// an extracted chart; a closed one does not; a figure is sent once.
func TestResultsMatplotlib(t *testing.T) {
	const pre = "import matplotlib.pyplot as plt\n"
	cases := []struct {
		name   string
		code   string
		limits api.Limits
		n      int
		check  func(t *testing.T, r *api.Result)
	}{
		{name: "shown and left open", n: 2, code: pre + "plt.plot([1, 2, 3], [4, 1, 9], label='s')\nplt.title('t')\nplt.xlabel('x')\nplt.show()\nprint('between')\nplt.figure()\nplt.bar(['a', 'b'], [1, 2])\nNone",
			check: func(t *testing.T, r *api.Result) {
				line, bar := figure(t, r.Results[0]), figure(t, r.Results[1])
				if line.Type != "line" || line.Title != "t" || line.XAxis.Label != "x" || line.Series[0].Label != "s" || fmt.Sprint(line.Series[0].Y) != "[4 1 9]" {
					t.Errorf("line chart %+v", line)
				}
				if bar.Type != "bar" || fmt.Sprint(bar.Series[0].X) != "[a b]" || fmt.Sprint(bar.Series[0].Y) != "[1 2]" {
					t.Errorf("bar chart %+v", bar)
				}
				arts := r.ArtifactContents()
				if len(arts) != 2 || !bytes.Equal(arts[1].Data, r.Results[1].PNG()) || len(r.Artifacts[0].Data) != 0 {
					t.Errorf("artifacts %d, the figure's bytes sent twice or not resolved", len(arts))
				}
			}},
		{name: "a closed figure is not shown", n: 0, code: pre + "fig = plt.figure()\nplt.plot([1])\nplt.close(fig)"},
		{name: "subplots give a composite chart", n: 1, code: pre + "fig, (a, b) = plt.subplots(1, 2)\na.plot([0, 1], [1, 0])\nb.scatter([1, 2], [3, 4])\nfig.suptitle('both')\nNone",
			check: func(t *testing.T, r *api.Result) {
				c := figure(t, r.Results[0])
				if c.Type != "composite" || c.Title != "both" || len(c.Charts) != 2 || c.Charts[0].Type != "line" || c.Charts[1].Type != "scatter" || fmt.Sprint(c.Charts[1].Series[0].Y) != "[3 4]" {
					t.Errorf("%+v", c)
				}
			}},
		{name: "pie", n: 1, code: pre + "plt.pie([1, 3], labels=['a', 'b'])\nNone",
			check: func(t *testing.T, r *api.Result) {
				c := figure(t, r.Results[0])
				if c.Type != "pie" || fmt.Sprint(c.Series[0].Labels, c.Series[0].Fractions) != "[a b] [0.25 0.75]" {
					t.Errorf("%+v", c)
				}
			}},
		{name: "svg on request", n: 1, limits: api.Limits{FigureSVG: true}, code: pre + "plt.plot([1, 2])\nNone",
			check: func(t *testing.T, r *api.Result) {
				if !strings.Contains(r.Results[0].SVG(), "<svg") {
					t.Errorf("no SVG: %v", outputstest.Keys(r.Results[0].Data))
				}
			}},
		{name: "no svg unless asked", n: 1, code: pre + "plt.plot([1, 2])\nNone",
			check: func(t *testing.T, r *api.Result) {
				if r.Results[0].Has("image/svg+xml") {
					t.Error("SVG without figure_svg")
				}
			}},
		{name: "a figure as the final expression is sent once", n: 1, code: pre + "fig = plt.figure()\nplt.plot([1, 2])\nfig",
			check: func(t *testing.T, r *api.Result) {
				if !r.Results[0].IsMainResult || r.Results[0].PNG() == nil {
					t.Errorf("%+v", r.Results[0])
				}
			}},
		{name: "plt.plot as the final expression, then its figure", n: 2, code: pre + "plt.plot([1, 2])",
			check: func(t *testing.T, r *api.Result) {
				if !strings.Contains(r.Results[0].Text(), "Line2D") || !r.Results[0].IsMainResult || r.Results[1].PNG() == nil {
					t.Errorf("%s then %v", r.Results[0].Text(), outputstest.Keys(r.Results[1].Data))
				}
			}},
		{name: "seaborn is matplotlib", n: 1, code: "import seaborn as sns\nsns.barplot(x=['a', 'b', 'a'], y=[1, 2, 3])\nNone",
			check: func(t *testing.T, r *api.Result) {
				c := figure(t, r.Results[0])
				if c.Type != "bar" || fmt.Sprint(c.Series[0].X) != "[a b]" || fmt.Sprint(c.Series[0].Y) != "[2 2]" {
					t.Errorf("%+v", c)
				}
			}},
		{name: "figures after an exception are still shown", n: 1, code: pre + "plt.plot([1])\n1 / 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, api.RunRequest{Code: tc.code, Limits: tc.limits})
			if len(r.Results) != tc.n {
				t.Fatalf("%d outputs, want %d; error %+v\nstderr: %s", len(r.Results), tc.n, r.Error, r.Stderr)
			}
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}
}

// TestResultsPandas: a DataFrame gives pandas' HTML and a structured table, both limited to 50 rows;
// a Series a one-column table; a Styler (DataFrame.style, with jinja2) its styled HTML.
func TestResultsPandas(t *testing.T) {
	const pre = "import pandas as pd\n"
	cases := []struct {
		name  string
		code  string
		check func(t *testing.T, o api.Output)
	}{
		{name: "small frame", code: pre + "pd.DataFrame({'x': [1, 2], 'y': ['u', 'v']})",
			check: func(t *testing.T, o api.Output) {
				tb, err := o.Table()
				if err != nil || fmt.Sprint(tb.Data) != "[map[index:0 x:1 y:u] map[index:1 x:2 y:v]]" || tb.Schema.Fields[2].Type != "string" {
					t.Fatalf("%+v %v", tb, err)
				}
				if !strings.Contains(o.HTML(), "<table") || !strings.Contains(o.Text(), "u") || string(o.Metadata["rows"]) != "2" {
					t.Fatalf("html %q text %q", o.HTML(), o.Text())
				}
			}},
		{name: "large frame is limited", code: pre + "pd.DataFrame({'n': range(1000)})",
			check: func(t *testing.T, o api.Output) {
				tb, err := o.Table()
				if err != nil || len(tb.Data) != 50 || string(o.Metadata["truncated_rows"]) != "950" || strings.Count(o.HTML(), "<tr") > 60 {
					t.Fatalf("%d rows, metadata %v, %d html rows", len(tb.Data), o.Metadata, strings.Count(o.HTML(), "<tr"))
				}
			}},
		{name: "series", code: pre + "pd.Series([3, 4], name='s')",
			check: func(t *testing.T, o api.Output) {
				if tb, err := o.Table(); err != nil || len(tb.Schema.Fields) != 2 || tb.Schema.Fields[1].Name != "s" {
					t.Fatalf("%+v %v", tb, err)
				}
			}},
		{name: "styled frame", code: pre + "pd.DataFrame({'a': [1, 2]}).style.highlight_max(color='red')",
			check: func(t *testing.T, o api.Output) {
				if !o.IsMainResult || !strings.Contains(o.HTML(), "<style") || !strings.Contains(o.HTML(), "background-color: red") {
					t.Fatalf("styled html %.300q", o.HTML())
				}
			}},
		{name: "displayed frame", code: pre + "display(pd.DataFrame({'a': [1]}))\nNone",
			check: func(t *testing.T, o api.Output) {
				if o.Type != api.OutputDisplayData || !o.Has(api.MIMETable) {
					t.Fatalf("%+v", o)
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, api.RunRequest{Code: tc.code})
			if r.Error != nil || len(r.Results) != 1 {
				t.Fatalf("error %+v, %d outputs\nstderr: %s", r.Error, len(r.Results), r.Stderr)
			}
			tc.check(t, r.Results[0])
		})
	}
}

// TestResultsPlotly: fig.show() displays the figure's JSON where it is called; a figure as the final
// expression is the main result.
func TestResultsPlotly(t *testing.T) {
	r := run(t, api.RunRequest{Code: "import plotly.graph_objects as go\nfig = go.Figure(go.Bar(x=[1, 2], y=[3, 4]))\nprint('a')\nfig.show()\nprint('b')\nfig"})
	if r.Error != nil || len(r.Results) != 2 || r.Stdout != "a\nb\n" {
		t.Fatalf("error %+v, %d outputs, stdout %q\nstderr: %s", r.Error, len(r.Results), r.Stdout, r.Stderr)
	}
	for i, o := range r.Results {
		if !strings.Contains(string(o.Data[api.MIMEPlotly]), `"type": "bar"`) && !strings.Contains(string(o.Data[api.MIMEPlotly]), `"type":"bar"`) {
			t.Errorf("output %d: %.200s", i, o.Data[api.MIMEPlotly])
		}
	}
	if r.Results[0].IsMainResult || !r.Results[1].IsMainResult {
		t.Error("show() is not display_data or the final figure not the main result")
	}
}

// TestResultsStreamInOrderWithPrints: on heavy too, outputs stream between the prints around them.
func TestResultsStreamInOrderWithPrints(t *testing.T) {
	var mu sync.Mutex
	var got []string
	add := func(s string) { mu.Lock(); got = append(got, s); mu.Unlock() }
	code := "print('a')\ndisplay(1)\nprint('b')\nimport matplotlib.pyplot as plt\nplt.plot([1])\nplt.show()\nprint('c')\n'main'"
	r, err := eng.Run(context.Background(), api.RunRequest{Code: code}, tier.Stream{
		Stdout: func(s string) { add("stdout:" + s) },
		Output: func(o api.Output) { add(o.Type + ":" + strings.SplitN(o.Text(), " ", 2)[0]) },
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "[stdout:a\n display_data:1 stdout:b\n display_data:<Figure stdout:c\n execute_result:'main']"
	if fmt.Sprint(got) != want || len(r.Results) != 3 {
		t.Fatalf("streamed %q, want %q", fmt.Sprint(got), want)
	}
}

// TestResultsCapsOnHeavy: the host's caps hold for what the agent sends.
func TestResultsCapsOnHeavy(t *testing.T) {
	lim, err := eng.Limits(api.Limits{MaxResultBytes: 20000})
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, api.RunRequest{Code: "import matplotlib.pyplot as plt\nplt.plot(range(100))\n'x' * 100000", Limits: lim})
	if len(r.Results) != 2 || !strings.HasSuffix(r.Results[0].Text(), api.TruncationMarker) {
		t.Fatalf("%d outputs", len(r.Results))
	}
	if fig := r.Results[1]; !fig.Truncated() || fig.Has("image/png") || len(r.Artifacts) != 0 {
		t.Fatalf("a figure past the cap: %v, %d artifacts", outputstest.Keys(fig.Data), len(r.Artifacts))
	}
}
