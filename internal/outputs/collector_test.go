package outputs

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/entersandbox/agentbox/api"
)

// TestCollectorChecksWhatTheGuestSends: a well-formed output is kept as sent; anything else becomes
// a display_data saying it was unreadable, never a failure of the run.
func TestCollectorChecksWhatTheGuestSends(t *testing.T) {
	cases := []struct {
		name, raw string
		bad       string // substring of the note; "" means kept as sent
	}{
		{name: "display_data", raw: `{"type":"display_data","data":{"text/plain":"1"},"metadata":{},"is_main_result":false}`},
		{name: "execute_result with JSON data", raw: `{"type":"execute_result","data":{"text/plain":"d","application/json":{"a":1},"application/vnd.x+json":[1]},"is_main_result":true}`},
		{name: "not JSON", raw: `{"type":`, bad: "not an output object"},
		{name: "unknown type", raw: `{"type":"stream","data":{"text/plain":"x"}}`, bad: "neither execute_result nor display_data"},
		{name: "no data", raw: `{"type":"display_data","data":{}}`, bad: "no data"},
		{name: "not a MIME type", raw: `{"type":"display_data","data":{"html":"x"}}`, bad: "not a MIME type"},
		{name: "text that is not a string", raw: `{"type":"display_data","data":{"text/html":{"a":1}}}`, bad: "text/html must be a string"},
		{name: "main result flag on display_data is dropped", raw: `{"type":"display_data","data":{"text/plain":"x"},"is_main_result":true}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var streamed []api.Output
			c := NewCollector(api.Limits{}, func(o api.Output) { streamed = append(streamed, o) })
			c.Add([]byte(tc.raw))
			outs := c.Outputs()
			if len(outs) != 1 || len(streamed) != 1 {
				t.Fatalf("%d outputs, %d streamed", len(outs), len(streamed))
			}
			o := outs[0]
			if tc.bad != "" {
				if o.Type != api.OutputDisplayData || !strings.Contains(o.Text(), tc.bad) {
					t.Fatalf("%+v, want a note containing %q", o, tc.bad)
				}
				return
			}
			var w wire
			json.Unmarshal([]byte(tc.raw), &w)
			if o.Type != w.Type || len(o.Data) != len(w.Data) || o.IsMainResult != (w.IsMainResult && w.Type == api.OutputExecuteResult) {
				t.Fatalf("%+v from %s", o, tc.raw)
			}
		})
	}
}

func output(data map[string]string) []byte {
	d := map[string]json.RawMessage{}
	for k, v := range data {
		d[k] = json.RawMessage(v)
	}
	b, _ := json.Marshal(map[string]any{"type": "display_data", "data": d, "metadata": map[string]any{"figure": 1}})
	return b
}

// TestCollectorCaps: the per-output cap shortens text (with the marker, text/plain last) and drops
// binary or JSON data, naming them in the metadata; the per-run cap leaves whole outputs out.
func TestCollectorCaps(t *testing.T) {
	long := `"` + strings.Repeat("é", 3000) + `"` // 6000 bytes, multi-byte runes
	cases := []struct {
		name      string
		item, all int
		adds      [][]byte
		kept      int
		omitted   int
		check     func(t *testing.T, outs []api.Output)
	}{
		{name: "text is cut at a rune boundary with the marker", item: 2000, all: 1 << 20, adds: [][]byte{output(map[string]string{"text/html": long, "text/plain": `"short"`})}, kept: 1,
			check: func(t *testing.T, outs []api.Output) {
				h := outs[0].HTML()
				if !strings.HasSuffix(h, api.TruncationMarker) || !strings.HasPrefix(h, "éé") || outs[0].Text() != "short" || !strings.Contains(string(outs[0].Metadata[api.OutputTruncatedMeta]), "text/html") {
					t.Fatalf("html %d bytes %q..., plain %q, meta %s", len(h), h[:10], outs[0].Text(), outs[0].Metadata[api.OutputTruncatedMeta])
				}
			}},
		{name: "binary and JSON are dropped, not cut", item: 2000, all: 1 << 20,
			adds: [][]byte{output(map[string]string{"image/png": `"` + strings.Repeat("A", 5000) + `"`, "application/json": `[` + strings.Repeat("1,", 2000) + `1]`, "text/plain": `"fig"`})}, kept: 1,
			check: func(t *testing.T, outs []api.Output) {
				o := outs[0]
				if o.Has("image/png") || o.Has("application/json") || o.Text() != "fig" || string(o.Metadata[api.OutputTruncatedMeta]) != `["application/json","image/png"]` {
					t.Fatalf("%v %s", keys(o), o.Metadata[api.OutputTruncatedMeta])
				}
			}},
		{name: "nothing left but the note", item: 300, all: 1 << 20, adds: [][]byte{output(map[string]string{"image/png": `"` + strings.Repeat("A", 5000) + `"`})}, kept: 1,
			check: func(t *testing.T, outs []api.Output) {
				if !strings.Contains(outs[0].Text(), "left out") {
					t.Fatalf("%+v", outs[0])
				}
			}},
		{name: "the run's cap leaves outputs out", item: 1 << 20, all: 250, adds: [][]byte{output(map[string]string{"text/plain": `"` + strings.Repeat("a", 100) + `"`}),
			output(map[string]string{"text/plain": `"` + strings.Repeat("b", 100) + `"`}), output(map[string]string{"text/plain": `"c"`})}, kept: 2, omitted: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCollector(api.Limits{MaxResultBytes: tc.item, MaxResultsBytes: tc.all}, nil)
			for _, a := range tc.adds {
				c.Add(a)
			}
			outs := c.Outputs()
			if len(outs) != tc.kept || c.Omitted() != tc.omitted {
				t.Fatalf("kept %d omitted %d, want %d %d", len(outs), c.Omitted(), tc.kept, tc.omitted)
			}
			for _, o := range outs {
				if n := sizeOf(o); n > tc.item {
					t.Errorf("output of %d bytes kept past the %d cap", n, tc.item)
				}
			}
			if tc.check != nil {
				tc.check(t, outs)
			}
		})
	}
}

func keys(o api.Output) []string {
	var out []string
	for k := range o.Data {
		out = append(out, k)
	}
	return out
}

// TestCollectorFigureArtifacts: a figure's artifact refers to its output and carries no bytes, and
// ArtifactContents gives them back; names count figures (their numbers repeat after plt.show).
func TestCollectorFigureArtifacts(t *testing.T) {
	c := NewCollector(api.Limits{}, nil)
	c.Add([]byte(`{"type":"display_data","data":{"text/plain":"t"}}`))
	c.Add(output(map[string]string{"image/png": `"iVBORw0KGgo="`, "text/plain": `"<Figure>"`}))
	c.Add(output(map[string]string{"image/png": `"iVBORw0KGgo="`, "text/plain": `"<Figure>"`}))
	var res api.Result
	c.Finish(&res)
	if len(res.Results) != 3 || len(res.Artifacts) != 2 {
		t.Fatalf("%d results %d artifacts", len(res.Results), len(res.Artifacts))
	}
	for i, a := range res.Artifacts {
		if a.Output == nil || *a.Output != i+1 || len(a.Data) != 0 || a.Name != []string{"figure-1.png", "figure-2.png"}[i] {
			t.Fatalf("artifact %d: %+v", i, a)
		}
	}
	for _, a := range res.ArtifactContents() {
		if string(a.Data) != "\x89PNG\r\n\x1a\n" {
			t.Fatalf("%s: %q", a.Name, a.Data)
		}
	}
	var empty api.Result
	NewCollector(api.Limits{}, nil).Finish(&empty)
	if empty.Results == nil || len(empty.Artifacts) != 0 {
		t.Fatalf("no outputs: results %v artifacts %v", empty.Results, empty.Artifacts)
	}
}
