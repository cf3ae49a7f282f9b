package console

import (
	"encoding/json"
	"html/template"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

func out(data map[string]string) api.Output {
	o := api.Output{Type: api.OutputDisplayData, Data: map[string]json.RawMessage{}}
	for k, v := range data {
		o.Data[k] = json.RawMessage(v)
	}
	return o
}

func TestRenderOutputKeepsGuestContentInert(t *testing.T) {
	for _, tc := range []struct {
		name       string
		o          api.Output
		want, miss []string
	}{
		{"html goes into a sandboxed frame", out(map[string]string{"text/html": `"<script>alert(sessionStorage.key)</script><b>hi</b>"`, "text/plain": `"hi"`}),
			[]string{`<iframe class="html-output" sandbox=""`, `srcdoc="`, "&lt;script&gt;alert", "default-src &#39;none&#39;"}, []string{"<script>", "<b>hi"}},
		{"svg is an image, never inline", out(map[string]string{"image/svg+xml": `"<svg onload=\"alert(1)\"/>"`}),
			[]string{`<img class="chart" alt="SVG image" src="data:image/svg+xml;base64,`}, []string{"<svg", "onload"}},
		{"png is a data image", out(map[string]string{"image/png": `"iVBORw0KGgo="`, "text/plain": `"<Figure size 640x480>"`}),
			[]string{`src="data:image/png;base64,iVBORw0KGgo="`, `alt="&lt;Figure size 640x480&gt;"`}, nil},
		{"png that is not base64 says so", out(map[string]string{"image/png": `"not base64!"`}), []string{"not valid base64"}, []string{"<img"}},
		{"a table before its html", out(map[string]string{api.MIMETable: `{"schema":{"fields":[{"name":"a","type":"integer"},{"name":"b","type":"string"}]},"data":[{"a":1,"b":"<x>"}]}`, "text/html": `"<table></table>"`}),
			[]string{`<table class="data">`, `<th title="integer">a</th>`, "<td>1</td>", "<td>&lt;x&gt;</td>"}, []string{"iframe"}},
		{"plotly goes to the chart frame", out(map[string]string{api.MIMEPlotly: `{"data":[{"type":"bar","y":[1,2]}],"layout":{"title":"</iframe><script>"}}`}),
			[]string{`class="chart-frame" sandbox="allow-scripts" src="/ui/static/chart.html"`, `data-lib="plotly"`, "&lt;/iframe&gt;&lt;script&gt;"}, []string{"</iframe><script>"}},
		{"vega-lite, the newest version", out(map[string]string{"application/vnd.vegalite.v4+json": `{"mark":"bar"}`, "application/vnd.vegalite.v5+json": `{"mark":"point"}`}),
			[]string{`data-lib="vega-lite"`, "point"}, []string{"&#34;bar&#34;"}},
		{"json is a tree", out(map[string]string{"application/json": `{"b":[1,"<s>"],"a":null}`}),
			[]string{`class="json-tree"`, `<span class="json-key">a</span>: <span class="json-null">null</span>`, "&#34;&lt;s&gt;&#34;", "2 items"}, []string{"<s>"}},
		{"plain text is escaped", out(map[string]string{"text/plain": `"<i>1</i>"`}), []string{`<pre class="text">&lt;i&gt;1&lt;/i&gt;</pre>`}, nil},
		{"a chart's data is shown too", out(map[string]string{"image/png": `"iVBORw0KGgo="`, api.MIMEChart: `{"type":"line","title":"t"}`}),
			[]string{"chart data (line)", `src="data:image/png`}, nil},
		{"cut outputs say so", api.Output{Data: map[string]json.RawMessage{"text/plain": json.RawMessage(`"x"`)}, Metadata: map[string]json.RawMessage{api.OutputTruncatedMeta: json.RawMessage(`["text/plain"]`)}},
			[]string{"cut by the result caps"}, nil},
		{"nothing to show", out(map[string]string{"application/x-unknown": `"?"`}), []string{"no representation the console shows"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := string(renderOutput(tc.o))
			mustContain(t, got, tc.want...)
			mustNotContain(t, got, tc.miss...)
		})
	}
}

func TestJSONTreeStopsAtItsCap(t *testing.T) {
	big := make([]int, maxJSONNodes+50)
	raw, _ := json.Marshal(big)
	got := string(jsonTree(raw))
	if n := strings.Count(got, `class="json-num"`); n >= maxJSONNodes {
		t.Errorf("%d values shown, cap %d", n, maxJSONNodes)
	}
	mustContain(t, got, "more values not shown")
	mustContain(t, string(jsonTree(json.RawMessage(`{bad`))), "not valid JSON")
}

func TestHighlightPythonClassesEachToken(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      template.HTML
	}{
		{"keywords and names", "def f(x): return x", `<span class="kw">def</span> f(x): <span class="kw">return</span> x`},
		{"builtins", "print(len(a))", `<span class="bi">print</span>(<span class="bi">len</span>(a))`},
		{"strings with prefixes", `f"{x}" + rb'\x00'`, `<span class="str">f&#34;{x}&#34;</span> + <span class="str">rb&#39;\x00&#39;</span>`},
		{"triple-quoted strings span lines", "s = '''a\nb''' # c", `s = <span class="str">&#39;&#39;&#39;a` + "\n" + `b&#39;&#39;&#39;</span> <span class="com"># c</span>`},
		{"escaped quotes stay inside", `"a\"b" x`, `<span class="str">&#34;a\&#34;b&#34;</span> x`},
		{"unterminated string ends at the line", "'abc\nx = 1", `<span class="str">&#39;abc</span>` + "\n" + `x = <span class="num">1</span>`},
		{"numbers", "1 + 2.5e-3 + 0x1F + .5", `<span class="num">1</span> + <span class="num">2.5e-3</span> + <span class="num">0x1F</span> + <span class="num">.5</span>`},
		{"names with digits are not numbers", "x1 = y2", `x1 = y2`},
		{"decorators at a line start", "@app.route\ndef g(): pass", `<span class="dec">@app.route</span>` + "\n" + `<span class="kw">def</span> g(): <span class="kw">pass</span>`},
		{"matrix multiply is not a decorator", "c = a @ b", `c = a @ b`},
		{"html is escaped", "x = '<script>'", `x = <span class="str">&#39;&lt;script&gt;&#39;</span>`},
		{"unicode names", "größe = 1", `größe = <span class="num">1</span>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := highlightPython(tc.src); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestStepOutcomeColours(t *testing.T) {
	for _, tc := range []struct {
		s    api.Step
		want string
	}{
		{api.Step{Kind: api.StepCell}, "ok"},
		{api.Step{Kind: api.StepCell, ErrorType: "KeyError", ExitCode: 1}, "error"},
		{api.Step{Kind: api.StepCell, ErrorType: api.ErrTimeout, ExitCode: 124}, "limit"},
		{api.Step{Kind: api.StepCommand, ExitCode: 2}, "error"},
		{api.Step{Kind: api.StepRewind}, "info"},
		{api.Step{Kind: api.StepStart}, "info"},
	} {
		t.Run(string(tc.s.Kind)+"/"+tc.s.ErrorType, func(t *testing.T) {
			if got := stepOutcome(tc.s); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}
