package nano

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/tier"
)

// wantOut is what a test expects of one output: its type, whether it is the main result, and MIME
// types with the exact data (a JSON literal) or, with a leading "~", a substring of the string data.
type wantOut struct {
	typ  string
	main bool
	data map[string]string
}

func checkOutputs(t *testing.T, got []api.Output, want []wantOut) {
	t.Helper()
	if len(got) != len(want) {
		b, _ := json.Marshal(got)
		t.Fatalf("%d outputs, want %d: %s", len(got), len(want), b)
	}
	for i, w := range want {
		o := got[i]
		if o.Type != w.typ || o.IsMainResult != w.main {
			t.Errorf("output %d: type %s main %v, want %s %v", i, o.Type, o.IsMainResult, w.typ, w.main)
		}
		for mime, v := range w.data {
			raw, ok := o.Data[mime]
			switch {
			case !ok:
				t.Errorf("output %d has no %s: %v", i, mime, keys(o.Data))
			case strings.HasPrefix(v, "~"):
				if !strings.Contains(o.TextOf(mime), v[1:]) {
					t.Errorf("output %d %s = %s, want it to contain %q", i, mime, raw, v[1:])
				}
			default:
				if !jsonEqual(t, raw, v) {
					t.Errorf("output %d %s = %s, want %s", i, mime, raw, v)
				}
			}
		}
	}
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func jsonEqual(t *testing.T, a json.RawMessage, b string) bool {
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatalf("want %s: %v", b, err)
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return string(xb) == string(yb)
}

func plain(v string) map[string]string { return map[string]string{"text/plain": v} }

var pngBytes = []byte("\x89PNG\r\n\x1a\nnot really")

// TestResultsLastExpressionRules are IPython's rules for the main result, in a one-shot run (REPL
// semantics by default) and with script: true.
func TestResultsLastExpressionRules(t *testing.T) {
	cases := []struct {
		name    string
		code    string
		script  bool
		want    []wantOut
		errType string
		stdout  string
	}{
		{name: "expression", code: "x = 20\nx + 22", want: []wantOut{{typ: api.OutputExecuteResult, main: true, data: plain(`"42"`)}}},
		{name: "expression after a comment and blank lines", code: "'a' * 3  # three\n\n# done\n", want: []wantOut{{typ: api.OutputExecuteResult, main: true, data: plain(`"'aaa'"`)}}},
		{name: "None gives none", code: "None"},
		{name: "a call returning None gives none", code: "print('p')", stdout: "p\n"},
		{name: "trailing semicolon suppresses", code: "1 + 1;"},
		{name: "semicolon then a comment suppresses", code: "x = 'é'; x ;  # quiet"},
		{name: "semicolon between statements does not", code: "x = 2; x * 3", want: []wantOut{{typ: api.OutputExecuteResult, main: true, data: plain(`"6"`)}}},
		{name: "assignment gives none", code: "y = 5"},
		{name: "augmented assignment gives none", code: "y = 5\ny += 1"},
		{name: "if block gives none", code: "if True:\n    7"},
		{name: "for block gives none", code: "for i in range(2):\n    i"},
		{name: "only the last expression", code: "1\n2\n3", want: []wantOut{{typ: api.OutputExecuteResult, main: true, data: plain(`"3"`)}}},
		{name: "syntax error", code: "x = (1,\n", errType: "SyntaxError"},
		{name: "an expression that raises", code: "print('before')\n1 / 0", errType: "ZeroDivisionError", stdout: "before\n"},
		{name: "empty program", code: ""},
		{name: "script semantics", code: "40 + 2", script: true},
		{name: "script semantics keep display", code: "display(1)\n2", script: true, want: []wantOut{{typ: api.OutputDisplayData, data: plain(`"1"`)}}},
		{name: "expression with a trailing newline", code: "10\n", want: []wantOut{{typ: api.OutputExecuteResult, main: true, data: plain(`"10"`)}}},
		{name: "a failing repr is reported, not fatal", code: "class B:\n    def __repr__(self): raise ValueError('no')\nB()",
			want: []wantOut{{typ: api.OutputExecuteResult, main: true, data: plain(`~repr failed: ValueError`)}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := run(t, api.RunRequest{Code: tc.code, Script: tc.script})
			if tc.errType == "" && res.Error != nil {
				t.Fatalf("error %+v", res.Error)
			}
			if tc.errType != "" && (res.Error == nil || res.Error.Type != tc.errType) {
				t.Fatalf("error %+v, want %s", res.Error, tc.errType)
			}
			if res.Stdout != tc.stdout {
				t.Errorf("stdout %q, want %q", res.Stdout, tc.stdout)
			}
			checkOutputs(t, res.Results, tc.want)
			if m := res.MainResult(); (m != nil) != (len(tc.want) > 0 && tc.want[0].main) {
				t.Errorf("MainResult %v", m)
			}
		})
	}
}

// TestResultsMIMETypes covers every representation a pure-Python object can give on nano: the
// _repr_*_ methods, _repr_mimebundle_ (with the plotly and Vega-Lite types), raw bundles and JSON.
func TestResultsMIMETypes(t *testing.T) {
	png := base64.StdEncoding.EncodeToString(pngBytes)
	cases := []struct {
		name string
		code string
		want map[string]string
		meta map[string]string
	}{
		{name: "text/html from a dataclass", code: "import dataclasses\n@dataclasses.dataclass\nclass P:\n    x: int\n    def _repr_html_(self): return f'<b>{self.x}</b>'\nP(3)",
			want: map[string]string{"text/html": `"<b>3</b>"`, "text/plain": `"P(x=3)"`}},
		{name: "text/markdown", code: "class M:\n    def _repr_markdown_(self): return '# hi'\nM()", want: map[string]string{"text/markdown": `"# hi"`}},
		{name: "image/svg+xml", code: "class S:\n    def _repr_svg_(self): return '<svg/>'\nS()", want: map[string]string{"image/svg+xml": `"<svg/>"`}},
		{name: "image/png from bytes", code: fmt.Sprintf("class I:\n    def _repr_png_(self): return %q.encode('latin-1')\nI()", string(pngBytes)), want: map[string]string{"image/png": `"` + png + `"`}},
		{name: "image/jpeg with metadata", code: "class J:\n    def _repr_jpeg_(self): return b'\\xff\\xd8', {'width': 4}\nJ()",
			want: map[string]string{"image/jpeg": `"/9g="`}, meta: map[string]string{"image/jpeg": `{"width": 4}`}},
		{name: "text/latex", code: "class L:\n    def _repr_latex_(self): return r'$x^2$'\nL()", want: map[string]string{"text/latex": `"$x^2$"`}},
		{name: "application/json", code: "class D:\n    def _repr_json_(self): return {'a': [1, 2]}\nD()", want: map[string]string{"application/json": `{"a": [1, 2]}`}},
		{name: "application/javascript", code: "class JS:\n    def _repr_javascript_(self): return 'alert(1)'\nJS()", want: map[string]string{"application/javascript": `"alert(1)"`}},
		{name: "application/pdf", code: "class PDF:\n    def _repr_pdf_(self): return b'%PDF'\nPDF()", want: map[string]string{"application/pdf": `"JVBERg=="`}},
		{name: "mimebundle with plotly and vega-lite", code: "class V:\n    def _repr_mimebundle_(self, include=None, exclude=None):\n        return {'application/vnd.vegalite.v4+json': {'mark': 'bar'}, 'application/vnd.plotly.v1+json': {'data': []}}, {'source': 't'}\nV()",
			want: map[string]string{"application/vnd.vegalite.v4+json": `{"mark": "bar"}`, "application/vnd.plotly.v1+json": `{"data": []}`, "text/plain": `~<__main__.V object`},
			meta: map[string]string{"source": `"t"`}},
		{name: "mimebundle wins over _repr_html_", code: "class W:\n    def _repr_mimebundle_(self, include=None, exclude=None): return {'text/html': 'bundle'}\n    def _repr_html_(self): return 'method'\nW()",
			want: map[string]string{"text/html": `"bundle"`}},
		{name: "a _repr_ returning None is skipped", code: "class N:\n    def _repr_html_(self): return None\nN()", want: map[string]string{"text/plain": `~N object`}},
		{name: "raw display of a bundle", code: "display({'text/markdown': '**b**', 'text/plain': 'b'}, raw=True)", want: map[string]string{"text/markdown": `"**b**"`, "text/plain": `"b"`}},
		{name: "display metadata", code: "display('x', metadata={'tag': 1})", want: map[string]string{"text/plain": `"'x'"`}, meta: map[string]string{"tag": `1`}},
		{name: "NaN in JSON is left out, the rest kept", code: "class F:\n    def _repr_json_(self): return {'v': float('nan')}\nF()", want: map[string]string{"text/plain": `~F object`}},
		{name: "text/plain of a dict", code: "{'k': [1, 2]}", want: map[string]string{"text/plain": `"{'k': [1, 2]}"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := run(t, api.RunRequest{Code: tc.code})
			if res.Error != nil || len(res.Results) != 1 {
				t.Fatalf("error %+v, %d outputs: %+v", res.Error, len(res.Results), res.Results)
			}
			o := res.Results[0]
			checkOutputs(t, res.Results, []wantOut{{typ: o.Type, main: o.IsMainResult, data: tc.want}})
			for k, v := range tc.meta {
				if raw, ok := o.Metadata[k]; !ok || !jsonEqual(t, raw, v) {
					t.Errorf("metadata %s = %s, want %s", k, raw, v)
				}
			}
			if tc.name == "NaN in JSON is left out, the rest kept" && (o.Has("application/json") || !strings.Contains(res.Stderr, "application/json of an output left out")) {
				t.Errorf("NaN JSON kept or not reported: %v, stderr %q", keys(o.Data), res.Stderr)
			}
		})
	}
}

// event is one streamed piece of a run.
type event struct{ kind, text string }

func streamRun(t *testing.T, run func(tier.Stream) (*api.Result, error)) ([]event, *api.Result) {
	t.Helper()
	var mu sync.Mutex
	var events []event
	add := func(kind, text string) {
		mu.Lock()
		defer mu.Unlock()
		if n := len(events); n > 0 && events[n-1].kind == kind && kind != "output" {
			events[n-1].text += text // a stream's chunks may split or join writes
			return
		}
		events = append(events, event{kind, text})
	}
	res, err := run(tier.Stream{
		Stdout: func(s string) { add("stdout", s) },
		Stderr: func(s string) { add("stderr", s) },
		Output: func(o api.Output) { add("output", o.Type+":"+o.Text()) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return events, res
}

// TestResultsStreamInOrderWithPrints: display() outputs and the main result stream between the
// prints around them, in a run and in a session cell, and the result lists the same outputs.
func TestResultsStreamInOrderWithPrints(t *testing.T) {
	code := "print('a')\ndisplay(1)\nprint('b', end='')\ndisplay(2, 3)\nimport sys; sys.stderr.write('e\\n')\nprint('c')\n'main'"
	want := []event{{"stdout", "a\n"}, {"output", "display_data:1"}, {"stdout", "b"}, {"output", "display_data:2"},
		{"output", "display_data:3"}, {"stderr", "e\n"}, {"stdout", "c\n"}, {"output", "execute_result:'main'"}}
	ctx := context.Background()
	sess, err := shared.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	for name, fn := range map[string]func(tier.Stream) (*api.Result, error){
		"run":          func(s tier.Stream) (*api.Result, error) { return shared.Run(ctx, api.RunRequest{Code: code}, s) },
		"session cell": func(s tier.Stream) (*api.Result, error) { return sess.Run(ctx, code, s) },
	} {
		t.Run(name, func(t *testing.T) {
			events, res := streamRun(t, fn)
			if fmt.Sprint(events) != fmt.Sprint(want) {
				t.Fatalf("streamed\n%v\nwant\n%v", events, want)
			}
			if res.Stdout != "a\nbc\n" || len(res.Results) != 4 || res.MainResult().Text() != "'main'" {
				t.Fatalf("result: stdout %q, %d outputs", res.Stdout, len(res.Results))
			}
		})
	}
}

// TestResultsSessionCells: every cell has REPL semantics and its own outputs; values persist.
func TestResultsSessionCells(t *testing.T) {
	ctx := context.Background()
	s, err := shared.NewSession(ctx, api.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	for i, c := range []struct{ code, main string }{
		{"x = [1, 2]", ""},
		{"x.append(3)\nx", "[1, 2, 3]"},
		{"len(x);", ""},
		{"x[0] / 0", ""},
		{"_ * 2", "[1, 2, 3, 1, 2, 3]"}, // _ is the last main result, as in IPython
	} {
		res, err := s.Run(ctx, c.code, tier.Stream{})
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if m := res.MainResult(); m != nil {
			got = m.Text()
		}
		if got != c.main {
			t.Errorf("cell %d %q: main result %q, want %q", i, c.code, got, c.main)
		}
	}
}

// TestResultsCaps: one output past max_result_bytes is cut with a marker (text) or loses the
// representation (binary), and outputs past max_results_bytes are left out and counted.
func TestResultsCaps(t *testing.T) {
	cases := []struct {
		name    string
		code    string
		limits  api.Limits
		check   func(t *testing.T, res *api.Result)
		omitted int
	}{
		{name: "long text is cut with the marker", code: "'x' * 100000", limits: api.Limits{MaxResultBytes: 10000},
			check: func(t *testing.T, res *api.Result) {
				o := res.Results[0]
				if txt := o.Text(); len(txt) > 10000 || !strings.HasSuffix(txt, api.TruncationMarker) || !o.Truncated() {
					t.Fatalf("%d bytes, truncated %v, metadata %s", len(txt), o.Truncated(), o.Metadata[api.OutputTruncatedMeta])
				}
			}},
		{name: "a large binary is left out, text kept", code: "class I:\n    def _repr_png_(self): return b'\\x89PNG' + bytes(50000)\nI()", limits: api.Limits{MaxResultBytes: 10000},
			check: func(t *testing.T, res *api.Result) {
				o := res.Results[0]
				if o.Has("image/png") || !strings.Contains(o.Text(), "I object") || string(o.Metadata[api.OutputTruncatedMeta]) != `["image/png"]` {
					t.Fatalf("data %v metadata %s", keys(o.Data), o.Metadata[api.OutputTruncatedMeta])
				}
			}},
		{name: "outputs past the run's cap are left out", code: "for i in range(10):\n    display('y' * 3000)", limits: api.Limits{MaxResultsBytes: 10000},
			omitted: 7, check: func(t *testing.T, res *api.Result) {
				if len(res.Results) != 3 {
					t.Fatalf("%d outputs kept, want 3", len(res.Results))
				}
			}},
		{name: "small outputs are untouched", code: "display('z')", check: func(t *testing.T, res *api.Result) {
			if res.Results[0].Truncated() || res.Results[0].Text() != "'z'" {
				t.Fatalf("%+v", res.Results[0])
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			lim, err := shared.Limits(tc.limits)
			if err != nil {
				t.Fatal(err)
			}
			res := run(t, api.RunRequest{Code: tc.code, Limits: lim})
			if res.Error != nil || len(res.Results) == 0 {
				t.Fatalf("error %+v, %d outputs", res.Error, len(res.Results))
			}
			if res.ResultsOmitted != tc.omitted {
				t.Errorf("results_omitted %d, want %d", res.ResultsOmitted, tc.omitted)
			}
			tc.check(t, res)
		})
	}
}

// TestResultsCapsAreValidated: the caps are limits like the others.
func TestResultsCapsAreValidated(t *testing.T) {
	for _, lim := range []api.Limits{{MaxResultBytes: -1}, {MaxResultsBytes: -5}, {MaxResultBytes: 1 << 40}} {
		if _, err := shared.Limits(lim); err == nil {
			t.Errorf("%+v accepted", lim)
		}
	}
}

// TestResultsFrameNotInStdout: an output never leaks into stdout, and text that merely looks like
// a marker (without the run's random part) stays ordinary output.
func TestResultsFrameNotInStdout(t *testing.T) {
	res := run(t, api.RunRequest{Code: "import os\nos.write(1, b'\\x00agentbox-output:00:{}\\n')\ndisplay('d')"})
	if res.Stdout != "\x00agentbox-output:00:{}\n" || len(res.Results) != 1 {
		t.Fatalf("stdout %q, %d outputs", res.Stdout, len(res.Results))
	}
}
