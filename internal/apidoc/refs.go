package apidoc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pb33f/go-yaml"
)

// schemaRefPrefix starts every reference the page turns into a link: components' schemas are the only
// targets with a section of their own.
const schemaRefPrefix = "#/components/schemas/"

// refUse is one `$ref` as written in the document.
type refUse struct {
	ref       string
	line, col int
}

// collectRefs lists the document's $ref values in document order.
func collectRefs(n *yaml.Node) []refUse {
	var out []refUse
	var walk func(*yaml.Node)
	walk = func(n *yaml.Node) {
		if n == nil {
			return
		}
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				if k.Value == "$ref" && v.Kind == yaml.ScalarNode {
					out = append(out, refUse{ref: v.Value, line: v.Line, col: v.Column})
					continue
				}
				walk(v)
			}
			return
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
	return out
}

// checkRefs resolves every $ref of the document (root is its document node or top mapping) and
// returns one error naming each reference that does not resolve, with its line. Only references
// inside the document are allowed: the generator runs offline and reads one file.
func checkRefs(root *yaml.Node) error {
	var errs []error
	for _, u := range collectRefs(root) {
		if _, err := resolveRef(root, u.ref); err != nil {
			errs = append(errs, fmt.Errorf("line %d col %d: %w", u.line, u.col, err))
		}
	}
	return errors.Join(errs...)
}

// resolveRef finds the node a local reference ("#/a/b~1c") points at.
func resolveRef(root *yaml.Node, ref string) (*yaml.Node, error) {
	if !strings.HasPrefix(ref, "#") {
		return nil, fmt.Errorf("$ref %q: only references inside the document (#/...) are supported", ref)
	}
	n := root
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	ptr := ref[1:]
	if ptr == "" {
		return n, nil
	}
	if !strings.HasPrefix(ptr, "/") {
		return nil, fmt.Errorf("$ref %q: not a JSON pointer (want #/...)", ref)
	}
	for _, raw := range strings.Split(ptr[1:], "/") {
		tok := strings.ReplaceAll(strings.ReplaceAll(raw, "~1", "/"), "~0", "~")
		next, err := child(n, tok)
		if err != nil {
			return nil, fmt.Errorf("$ref %q: %w", ref, err)
		}
		n = next
	}
	return n, nil
}

func child(n *yaml.Node, tok string) (*yaml.Node, error) {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch {
	case n == nil:
		return nil, fmt.Errorf("%q does not exist", tok)
	case n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == tok {
				return n.Content[i+1], nil
			}
		}
	case n.Kind == yaml.SequenceNode:
		if i, err := strconv.Atoi(tok); err == nil && i >= 0 && i < len(n.Content) && strconv.Itoa(i) == tok {
			return n.Content[i], nil
		}
	}
	return nil, fmt.Errorf("%q does not exist", tok)
}

// schemaName is the component name a reference to components/schemas names, or "" when ref points
// anywhere else (or deeper inside a schema).
func schemaName(ref string) string {
	rest, ok := strings.CutPrefix(ref, schemaRefPrefix)
	if !ok || rest == "" || strings.Contains(rest, "/") {
		return ""
	}
	return strings.ReplaceAll(strings.ReplaceAll(rest, "~1", "/"), "~0", "~")
}

// schemaAnchor is the id of a component schema's section.
func schemaAnchor(name string) string { return "schema-" + escapeID(name) }

// escapeID turns any string into one usable as an HTML id and URL fragment as it is: letters,
// digits, '-' and '_' stay, every other byte becomes ".XX" (hex). It is injective, so two names
// never share an anchor.
func escapeID(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, ".%02X", c)
	}
	return b.String()
}

// slug is a readable id fragment ("/v1/sessions/{id}" → "v1-sessions-id"); unlike escapeID it may
// map two strings to one, so callers make it unique (anchors.unique).
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
			dash = false
			continue
		}
		dash = true
	}
	return b.String()
}

// anchors hands out ids unique in one page.
type anchors map[string]bool

// unique returns base, or base-2, base-3... for the first one not yet handed out.
func (a anchors) unique(base string) string {
	id := base
	for i := 2; a[id]; i++ {
		id = base + "-" + strconv.Itoa(i)
	}
	a[id] = true
	return id
}
