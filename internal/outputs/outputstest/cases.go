// Package outputstest holds the rich-results cases both tiers' tests run (internal/nano and
// internal/heavy/integration): the same program must give the same outputs on nano and on heavy.
package outputstest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

// Want is what a case expects of one output: its type, whether it is the main result, and MIME types
// with the exact data (a JSON literal) or, with a leading "~", a substring of the string data.
type Want struct {
	Type string
	Main bool
	Data map[string]string
}

// Plain is a Data of text/plain only.
func Plain(v string) map[string]string { return map[string]string{"text/plain": v} }

// Case is one program and the result it must give.
type Case struct {
	Name    string
	Code    string
	Script  bool              // script semantics (a one-shot run with Script: true)
	Want    []Want            // the outputs, in order (LastExpression)
	ErrType string            // the error's type; "" for none
	Stdout  string            // the exact stdout (LastExpression)
	Data    map[string]string // the one output's data (MIME)
	Meta    map[string]string // the one output's metadata (MIME)
	Stderr  string            // a substring of stderr
	Without []string          // MIME types the one output must not have
}

// PNGBytes is what the image/png case's _repr_png_ returns.
var PNGBytes = []byte("\x89PNG\r\n\x1a\nnot really")

// LastExpression are IPython's rules for the main result, under REPL semantics unless Script.
var LastExpression = []Case{
	{Name: "expression", Code: "x = 20\nx + 22", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"42"`)}}},
	{Name: "expression after a comment and blank lines", Code: "'a' * 3  # three\n\n# done\n", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"'aaa'"`)}}},
	{Name: "None gives none", Code: "None"},
	{Name: "a call returning None gives none", Code: "print('p')", Stdout: "p\n"},
	{Name: "trailing semicolon suppresses", Code: "1 + 1;"},
	{Name: "semicolon then a comment suppresses", Code: "x = 'é'; x ;  # quiet"},
	{Name: "semicolon between statements does not", Code: "x = 2; x * 3", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"6"`)}}},
	{Name: "assignment gives none", Code: "y = 5"},
	{Name: "augmented assignment gives none", Code: "y = 5\ny += 1"},
	{Name: "if block gives none", Code: "if True:\n    7"},
	{Name: "for block gives none", Code: "for i in range(2):\n    i"},
	{Name: "only the last expression", Code: "1\n2\n3", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"3"`)}}},
	{Name: "constant after an assignment", Code: "x = 1\n40 + 2", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"42"`)}}},
	{Name: "constant after a semicolon", Code: "x = 1; 2", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"2"`)}}},
	{Name: "a lone string", Code: "'doc'", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"'doc'"`)}}},
	{Name: "multi-line expression then comments", Code: "[1,\n 2]\n# end\n\n", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"[1, 2]"`)}}},
	{Name: "multi-line expression suppressed", Code: "[1,\n 2];  # quiet"},
	{Name: "with block gives none", Code: "with open('/tmp/w', 'w') as f:\n    f"},
	{Name: "from-import gives none", Code: "from os import path"},
	{Name: "import with an alias gives none", Code: "import os.path as p"},
	{Name: "a call with a trailing comment", Code: "len('abc')  # three", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"3"`)}}},
	{Name: "import then an attribute", Code: "import os\nos.sep", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"'/'"`)}}},
	{Name: "a soft keyword as a name", Code: "match = 5\nmatch", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"5"`)}}},
	{Name: "a match statement gives none", Code: "match 1:\n    case 1:\n        pass"},
	{Name: "an expression starting with a keyword", Code: "x = 0\nnot x", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"True"`)}}},
	{Name: "one-line if gives none", Code: "x = 3\nif x: x"},
	{Name: "try block gives none", Code: "try:\n    1\nexcept Exception:\n    pass"},
	{Name: "def then a call", Code: "def f():\n    return 'r'\nf()", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"'r'"`)}}},
	{Name: "non-ASCII names", Code: "é = 'ü'\né * 2", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"'üü'"`)}}},
	{Name: "syntax error", Code: "x = (1,\n", ErrType: "SyntaxError"},
	{Name: "an expression that raises", Code: "print('before')\n1 / 0", ErrType: "ZeroDivisionError", Stdout: "before\n"},
	{Name: "empty program", Code: ""},
	{Name: "script semantics", Code: "40 + 2", Script: true},
	{Name: "script semantics keep display", Code: "display(1)\n2", Script: true, Want: []Want{{Type: api.OutputDisplayData, Data: Plain(`"1"`)}}},
	{Name: "expression with a trailing newline", Code: "10\n", Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`"10"`)}}},
	{Name: "a failing repr is reported, not fatal", Code: "class B:\n    def __repr__(self): raise ValueError('no')\nB()",
		Want: []Want{{Type: api.OutputExecuteResult, Main: true, Data: Plain(`~repr failed: ValueError`)}}},
}

// MIME covers every representation a pure-Python object can give: the _repr_*_ methods,
// _repr_mimebundle_ (with the plotly and Vega-Lite types), raw bundles and JSON. Each gives one output.
var MIME = func() []Case {
	png := base64.StdEncoding.EncodeToString(PNGBytes)
	return []Case{
		{Name: "text/html from a dataclass", Code: "import dataclasses\n@dataclasses.dataclass\nclass P:\n    x: int\n    def _repr_html_(self): return f'<b>{self.x}</b>'\nP(3)",
			Data: map[string]string{"text/html": `"<b>3</b>"`, "text/plain": `"P(x=3)"`}},
		{Name: "text/markdown", Code: "class M:\n    def _repr_markdown_(self): return '# hi'\nM()", Data: map[string]string{"text/markdown": `"# hi"`}},
		{Name: "image/svg+xml", Code: "class S:\n    def _repr_svg_(self): return '<svg/>'\nS()", Data: map[string]string{"image/svg+xml": `"<svg/>"`}},
		{Name: "image/png from bytes", Code: fmt.Sprintf("class I:\n    def _repr_png_(self): return %q.encode('latin-1')\nI()", string(PNGBytes)), Data: map[string]string{"image/png": `"` + png + `"`}},
		{Name: "image/jpeg with metadata", Code: "class J:\n    def _repr_jpeg_(self): return b'\\xff\\xd8', {'width': 4}\nJ()",
			Data: map[string]string{"image/jpeg": `"/9g="`}, Meta: map[string]string{"image/jpeg": `{"width": 4}`}},
		{Name: "text/latex", Code: "class L:\n    def _repr_latex_(self): return r'$x^2$'\nL()", Data: map[string]string{"text/latex": `"$x^2$"`}},
		{Name: "application/json", Code: "class D:\n    def _repr_json_(self): return {'a': [1, 2]}\nD()", Data: map[string]string{"application/json": `{"a": [1, 2]}`}},
		{Name: "application/javascript", Code: "class JS:\n    def _repr_javascript_(self): return 'alert(1)'\nJS()", Data: map[string]string{"application/javascript": `"alert(1)"`}},
		{Name: "application/pdf", Code: "class PDF:\n    def _repr_pdf_(self): return b'%PDF'\nPDF()", Data: map[string]string{"application/pdf": `"JVBERg=="`}},
		{Name: "mimebundle with plotly and vega-lite", Code: "class V:\n    def _repr_mimebundle_(self, include=None, exclude=None):\n        return {'application/vnd.vegalite.v4+json': {'mark': 'bar'}, 'application/vnd.plotly.v1+json': {'data': []}}, {'source': 't'}\nV()",
			Data: map[string]string{"application/vnd.vegalite.v4+json": `{"mark": "bar"}`, "application/vnd.plotly.v1+json": `{"data": []}`, "text/plain": `~<__main__.V object`},
			Meta: map[string]string{"source": `"t"`}},
		{Name: "mimebundle wins over _repr_html_", Code: "class W:\n    def _repr_mimebundle_(self, include=None, exclude=None): return {'text/html': 'bundle'}\n    def _repr_html_(self): return 'method'\nW()",
			Data: map[string]string{"text/html": `"bundle"`}},
		{Name: "a _repr_ returning None is skipped", Code: "class N:\n    def _repr_html_(self): return None\nN()", Data: map[string]string{"text/plain": `~N object`}},
		{Name: "raw display of a bundle", Code: "display({'text/markdown': '**b**', 'text/plain': 'b'}, raw=True)", Data: map[string]string{"text/markdown": `"**b**"`, "text/plain": `"b"`}},
		{Name: "display metadata", Code: "display('x', metadata={'tag': 1})", Data: map[string]string{"text/plain": `"'x'"`}, Meta: map[string]string{"tag": `1`}},
		{Name: "a formatter that raises keeps the text", Code: "class R:\n    @property\n    def _repr_mimebundle_(self): raise RuntimeError('x')\n    def __repr__(self): return 'R!'\nR()",
			Data: map[string]string{"text/plain": `"R!"`}, Stderr: "formatting a R failed: RuntimeError: x"},
		{Name: "NaN in JSON is left out, the rest kept", Code: "class F:\n    def _repr_json_(self): return {'v': float('nan')}\nF()", Data: map[string]string{"text/plain": `~F object`},
			Without: []string{"application/json"}, Stderr: "application/json of an output left out"},
		{Name: "text/plain of a dict", Code: "{'k': [1, 2]}", Data: map[string]string{"text/plain": `"{'k': [1, 2]}"`}},
	}
}()

// Check compares a result with the case.
func Check(t *testing.T, c Case, res *api.Result) {
	t.Helper()
	if c.ErrType == "" && res.Error != nil {
		t.Fatalf("error %+v", res.Error)
	}
	if c.ErrType != "" && (res.Error == nil || res.Error.Type != c.ErrType) {
		t.Fatalf("error %+v, want %s", res.Error, c.ErrType)
	}
	for _, own := range []string{"<agentbox-runner>", "outputs.py", "agent.py"} {
		if res.Error != nil && strings.Contains(res.Error.Traceback, own) {
			t.Errorf("the traceback shows the runner's frames (%s):\n%s", own, res.Error.Traceback)
		}
	}
	if c.Stderr != "" && !strings.Contains(res.Stderr, c.Stderr) {
		t.Errorf("stderr %q, want it to contain %q", res.Stderr, c.Stderr)
	}
	if c.Data == nil {
		if res.Stdout != c.Stdout {
			t.Errorf("stdout %q, want %q", res.Stdout, c.Stdout)
		}
		Outputs(t, res.Results, c.Want)
		if m := res.MainResult(); (m != nil) != (len(c.Want) > 0 && c.Want[len(c.Want)-1].Main) {
			t.Errorf("MainResult %v", m)
		}
		return
	}
	if len(res.Results) != 1 {
		t.Fatalf("%d outputs, want 1: %+v", len(res.Results), res.Results)
	}
	o := res.Results[0]
	Outputs(t, res.Results, []Want{{Type: o.Type, Main: o.IsMainResult, Data: c.Data}})
	for k, v := range c.Meta {
		if raw, ok := o.Metadata[k]; !ok || !JSONEqual(t, raw, v) {
			t.Errorf("metadata %s = %s, want %s", k, raw, v)
		}
	}
	for _, mime := range c.Without {
		if o.Has(mime) {
			t.Errorf("output has %s", mime)
		}
	}
}

// Outputs compares outputs with what is wanted of them, in order.
func Outputs(t *testing.T, got []api.Output, want []Want) {
	t.Helper()
	if len(got) != len(want) {
		b, _ := json.Marshal(got)
		t.Fatalf("%d outputs, want %d: %s", len(got), len(want), b)
	}
	for i, w := range want {
		o := got[i]
		if o.Type != w.Type || o.IsMainResult != w.Main {
			t.Errorf("output %d: type %s main %v, want %s %v", i, o.Type, o.IsMainResult, w.Type, w.Main)
		}
		for mime, v := range w.Data {
			raw, ok := o.Data[mime]
			switch {
			case !ok:
				t.Errorf("output %d has no %s: %v", i, mime, Keys(o.Data))
			case strings.HasPrefix(v, "~"):
				if !strings.Contains(o.TextOf(mime), v[1:]) {
					t.Errorf("output %d %s = %s, want it to contain %q", i, mime, raw, v[1:])
				}
			default:
				if !JSONEqual(t, raw, v) {
					t.Errorf("output %d %s = %s, want %s", i, mime, raw, v)
				}
			}
		}
	}
}

// Keys are a bundle's MIME types.
func Keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// JSONEqual compares JSON a with the JSON literal b, ignoring formatting and key order.
func JSONEqual(t *testing.T, a json.RawMessage, b string) bool {
	t.Helper()
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
