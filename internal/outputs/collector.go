// Package outputs is the rich-results machinery both tiers share: the guest side (outputs.py, run by
// the nano runner and the heavy agent) and the host side (Collector), which checks what a guest sends,
// applies the caps and streams each output in order.
package outputs

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/limits"
)

// PySource is the guest module (outputs.py); each tier loads it into its runner as _agentbox_outputs.
//
//go:embed outputs.py
var PySource []byte

// Collector gathers one run's outputs. The guest is untrusted: every output is parsed, checked and
// capped here, whatever outputs.py meant to send. Not safe for concurrent use: a tier feeds it from
// the goroutine that reads its guest.
type Collector struct {
	item, total int // caps: one output, all of them (bytes of data and metadata)
	used        int
	outputs     []api.Output
	omitted     int
	onOutput    func(api.Output)
}

// NewCollector makes a collector with lim's caps (resolved limits: MaxResultBytes and
// MaxResultsBytes set), calling onOutput (when not nil) with each output it keeps, as it keeps it.
func NewCollector(lim api.Limits, onOutput func(api.Output)) *Collector {
	c := &Collector{item: lim.MaxResultBytes, total: lim.MaxResultsBytes, onOutput: onOutput}
	if c.item <= 0 { // limits not resolved (a pool's warm-up run): the built-in defaults
		c.item = limits.DefaultResultBytes
	}
	if c.total <= 0 {
		c.total = limits.DefaultResultsBytes
	}
	return c
}

// wire is an output as a guest sends it.
type wire struct {
	Type         string                     `json:"type"`
	Data         map[string]json.RawMessage `json:"data"`
	Metadata     map[string]json.RawMessage `json:"metadata"`
	IsMainResult bool                       `json:"is_main_result"`
}

// Add takes one output as the guest encoded it. A malformed one is replaced by a display_data saying
// so (the program sent it: it is the program's output, not a fault of the sandbox).
func (c *Collector) Add(raw []byte) {
	out, err := parse(raw)
	if err != nil {
		out = api.Output{Type: api.OutputDisplayData, Data: map[string]json.RawMessage{
			"text/plain": jsonString(fmt.Sprintf("[agentbox: an unreadable output was left out: %v]", err))}}
	}
	c.keep(out)
}

func parse(raw []byte) (api.Output, error) {
	var w wire
	if err := json.Unmarshal(raw, &w); err != nil {
		return api.Output{}, fmt.Errorf("not an output object: %w", err)
	}
	if w.Type != api.OutputExecuteResult && w.Type != api.OutputDisplayData {
		return api.Output{}, fmt.Errorf("type %q is neither execute_result nor display_data", clip(w.Type, 40))
	}
	if len(w.Data) == 0 {
		return api.Output{}, fmt.Errorf("no data")
	}
	for mime, v := range w.Data {
		if !validMIME(mime) {
			return api.Output{}, fmt.Errorf("%q is not a MIME type", clip(mime, 40))
		}
		if !jsonValued(mime) && (len(v) == 0 || v[0] != '"') {
			return api.Output{}, fmt.Errorf("%s must be a string", mime)
		}
	}
	return api.Output{Type: w.Type, Data: w.Data, Metadata: w.Metadata,
		IsMainResult: w.IsMainResult && w.Type == api.OutputExecuteResult}, nil
}

// validMIME accepts type/subtype made of the characters MIME types use.
func validMIME(s string) bool {
	typ, sub, ok := strings.Cut(s, "/")
	if !ok || typ == "" || sub == "" || len(s) > 200 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/.+-_", r)) {
			return false
		}
	}
	return true
}

// jsonValued reports whether a MIME type's data is a JSON value rather than a string.
func jsonValued(mime string) bool {
	return mime == "application/json" || strings.HasSuffix(mime, "+json")
}

// keep applies the caps and records out.
func (c *Collector) keep(out api.Output) {
	size := sizeOf(out)
	if size > c.item {
		out, size = c.cut(out)
	}
	if c.used+size > c.total {
		c.omitted++
		return
	}
	c.used += size
	c.outputs = append(c.outputs, out)
	if c.onOutput != nil {
		c.onOutput(out)
	}
}

func sizeOf(out api.Output) int {
	n := 0
	for k, v := range out.Data {
		n += len(k) + len(v)
	}
	for k, v := range out.Metadata {
		n += len(k) + len(v)
	}
	return n
}

// cut fits an output into the per-output cap: metadata over a tenth of it is dropped, then text
// representations are shortened (ending with the marker), largest first, and binary or JSON ones left
// out. text/plain goes last, so what is left still says what the value was.
func (c *Collector) cut(out api.Output) (api.Output, int) {
	data := make(map[string]json.RawMessage, len(out.Data))
	for k, v := range out.Data {
		data[k] = v
	}
	md := make(map[string]json.RawMessage, len(out.Metadata)+1)
	mdSize := 0
	for k, v := range out.Metadata {
		md[k] = v
		mdSize += len(k) + len(v)
	}
	if mdSize > c.item/10 {
		md = map[string]json.RawMessage{}
	}
	mimes := make([]string, 0, len(data))
	for k := range data {
		mimes = append(mimes, k)
	}
	sort.Slice(mimes, func(i, j int) bool {
		if (mimes[i] == "text/plain") != (mimes[j] == "text/plain") {
			return mimes[j] == "text/plain"
		}
		if len(data[mimes[i]]) != len(data[mimes[j]]) {
			return len(data[mimes[i]]) > len(data[mimes[j]])
		}
		return mimes[i] < mimes[j]
	})
	var cutList []string
	over := sizeOf(api.Output{Data: data, Metadata: md}) + 200 - c.item // 200: room for the marker list
	for _, mime := range mimes {
		if over <= 0 {
			break
		}
		v := data[mime]
		cutList = append(cutList, mime)
		var s string
		if strings.HasPrefix(mime, "text/") && json.Unmarshal(v, &s) == nil {
			keep := len(s) - over - len(api.TruncationMarker)*2 // JSON escaping can only grow it: checked below
			if keep > 0 {
				short := jsonString(truncate(s, keep) + api.TruncationMarker)
				if len(short) < len(v) {
					over -= len(v) - len(short)
					data[mime] = short
					continue
				}
			}
		}
		over -= len(mime) + len(v)
		delete(data, mime)
	}
	if len(data) == 0 {
		data["text/plain"] = jsonString("[output left out: larger than the result cap]")
	}
	sort.Strings(cutList)
	md[api.OutputTruncatedMeta], _ = json.Marshal(cutList)
	out.Data, out.Metadata = data, md
	size := sizeOf(out)
	if size > c.item { // escaping made a shortened text longer than reckoned: keep only the marker
		out.Data = map[string]json.RawMessage{"text/plain": jsonString("[output left out: larger than the result cap]")}
		size = sizeOf(out)
	}
	return out, size
}

// truncate cuts s to at most n bytes at a rune boundary.
func truncate(s string, n int) string {
	if n >= len(s) {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func clip(s string, n int) string { return truncate(s, n) }

func jsonString(s string) json.RawMessage {
	b, _ := json.Marshal(s)
	return b
}

// Outputs are the outputs kept so far, never nil.
func (c *Collector) Outputs() []api.Output {
	if c.outputs == nil {
		return []api.Output{}
	}
	return c.outputs
}

// Omitted is how many outputs the per-run cap left out.
func (c *Collector) Omitted() int { return c.omitted }

// Finish stores the outputs in res, and an artifact for each matplotlib figure among them that
// refers to its output instead of carrying the image again (a chart is sent once).
func (c *Collector) Finish(res *api.Result) {
	res.Results, res.ResultsOmitted = c.Outputs(), c.omitted
	n := 0
	for i, out := range res.Results {
		if _, fig := out.Metadata["figure"]; !fig || !out.Has("image/png") {
			continue
		}
		n++ // figure numbers repeat once plt.show() closed the figures: names count instead
		res.Artifacts = append(res.Artifacts, api.Artifact{Name: fmt.Sprintf("figure-%d.png", n), MIME: "image/png", Data: []byte{}, Output: &i})
	}
}
