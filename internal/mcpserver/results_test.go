package mcpserver

import (
	"bytes"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestRunPythonRichResults: outputs become content in order: images as image content, tables as
// Markdown text, the rest as text; the structured result keeps them without their image bytes.
func TestRunPythonRichResults(t *testing.T) {
	cs := connect(t, "http")
	code := "import base64\n" +
		"display({'image/png': base64.b64encode(b'\\x89PNG\\r\\n\\x1a\\n').decode(), 'text/plain': '<img>'}, raw=True)\n" +
		"display({'application/vnd.dataresource+json': {'schema': {'fields': [{'name': 'a', 'type': 'integer'}]}, 'data': [{'a': 1}, {'a': 2}]}, 'text/plain': 'df'}, raw=True)\n" +
		"class M:\n    def _repr_markdown_(self): return '*m*'\ndisplay(M())\n" +
		"{'answer': 42}"
	res, out := callTool(t, cs, "run_python", map[string]any{"code": code})
	if res.IsError || len(res.Content) != 5 {
		t.Fatalf("%d contents: %s", len(res.Content), text(res))
	}
	if img, ok := res.Content[1].(*mcp.ImageContent); !ok || img.MIMEType != "image/png" || !bytes.HasPrefix(img.Data, []byte("\x89PNG")) {
		t.Fatalf("content 1: %T", res.Content[1])
	}
	for i, want := range map[int]string{2: "[display]\n| a |\n| --- |\n| 1 |\n| 2 |\n", 3: "[display]\n*m*", 4: "[result]\n{'answer': 42}"} {
		if tc, ok := res.Content[i].(*mcp.TextContent); !ok || tc.Text != want {
			t.Errorf("content %d: %#v, want %q", i, res.Content[i], want)
		}
	}
	results, _ := out["results"].([]any)
	if len(results) != 4 {
		t.Fatalf("structured results: %v", out["results"])
	}
	if data := results[0].(map[string]any)["data"].(map[string]any); data["image/png"] != nil || data["text/plain"] != "<img>" {
		t.Fatalf("structured image output: %v", data)
	}
	if strings.Contains(text(res), "iVBOR") {
		t.Fatal("image bytes in the text")
	}
}
