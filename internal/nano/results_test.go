package nano

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/outputs/outputstest"
	"github.com/entersandbox/agentbox/internal/tier"
)

// TestResultsLastExpressionRules are IPython's rules for the main result, in a one-shot run (REPL
// semantics by default) and with script: true.
func TestResultsLastExpressionRules(t *testing.T) {
	for _, tc := range outputstest.LastExpression {
		t.Run(tc.Name, func(t *testing.T) {
			outputstest.Check(t, tc, run(t, api.RunRequest{Code: tc.Code, Script: tc.Script}))
		})
	}
}

// TestResultsMIMETypes covers every representation a pure-Python object can give on nano.
func TestResultsMIMETypes(t *testing.T) {
	for _, tc := range outputstest.MIME {
		t.Run(tc.Name, func(t *testing.T) {
			outputstest.Check(t, tc, run(t, api.RunRequest{Code: tc.Code}))
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
					t.Fatalf("data %v metadata %s", outputstest.Keys(o.Data), o.Metadata[api.OutputTruncatedMeta])
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
