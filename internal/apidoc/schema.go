package apidoc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"slices"
	"strconv"
	"strings"

	"github.com/pb33f/go-yaml"
	"github.com/pb33f/libopenapi/datamodel/high/base"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
)

// schemaView is one schema as the page shows it: a link when it is a reference to a component
// schema, otherwise its type, constraints, fields and parts.
type schemaView struct {
	Link, LinkAnchor string // the component a $ref names
	Ref              string // a $ref that is not a component schema, resolved and shown inline
	Circular         bool   // Ref points back at a schema being shown: not expanded again
	Type             string // "string", "integer | null", "object"...; "" when only parts say it
	Format           string
	Title            string
	Description      template.HTML
	Enum             []string
	Const, Default   string
	Constraints      []string
	Flags            []string
	Fields           []fieldView
	Items            *schemaView
	Extra            *schemaView // additionalProperties: a schema
	ExtraAny         bool        // additionalProperties: true
	Closed           bool        // additionalProperties: false
	Parts            []partsView
	Extras
}

// Extras are the keys of an object that the page has no rendering for, shown as written (YAML)
// with a note rather than dropped.
type Extras struct {
	RawKeys []string
	Raw     string
}

// keys is a set of the keys a kind of object renders.
func keys(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// extrasOf collects the keys of mapping n that known does not list.
func extrasOf(n *yaml.Node, known map[string]bool) Extras {
	return extrasOfParts(extraPart{n: n, known: known})
}

// extraPart is one object whose unrendered keys go into an Extras, named with prefix.
type extraPart struct {
	prefix string
	n      *yaml.Node
	known  map[string]bool
}

func extrasOfParts(parts ...extraPart) Extras {
	var e Extras
	rest := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for _, p := range parts {
		n := p.n
		if n == nil || n.Kind != yaml.MappingNode {
			continue
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if p.known[k.Value] {
				continue
			}
			e.RawKeys = append(e.RawKeys, p.prefix+k.Value)
			key := k
			if p.prefix != "" {
				key = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: p.prefix + k.Value}
			}
			rest.Content = append(rest.Content, key, n.Content[i+1])
		}
	}
	if len(rest.Content) > 0 {
		e.Raw = yamlText(rest)
	}
	return e
}

type fieldView struct {
	Name     string
	Required bool
	Schema   *schemaView
}

type partsView struct {
	Label string // "All of", "One of", "Any of"
	Parts []*schemaView
}

// rendered lists the schema keywords schemaView shows; anything else is shown raw.
var rendered = map[string]bool{
	"$ref": true, "type": true, "format": true, "title": true, "description": true, "enum": true, "const": true,
	"default": true, "example": true, "examples": true, "properties": true, "required": true,
	"additionalProperties": true, "items": true, "allOf": true, "oneOf": true, "anyOf": true,
	"minimum": true, "maximum": true, "exclusiveMinimum": true, "exclusiveMaximum": true, "multipleOf": true,
	"minLength": true, "maxLength": true, "pattern": true, "minItems": true, "maxItems": true,
	"uniqueItems": true, "minProperties": true, "maxProperties": true, "nullable": true, "readOnly": true,
	"writeOnly": true, "deprecated": true, "contentEncoding": true, "contentMediaType": true,
}

// maxDepth bounds the inline expansion of references that are not component schemas.
const maxDepth = 32

func (b *builder) schema(sp *base.SchemaProxy, stack []string) *schemaView {
	if sp == nil {
		return nil
	}
	v := &schemaView{}
	if sp.IsReference() {
		ref := sp.GetReference()
		if name := schemaName(ref); name != "" {
			if anchor, ok := b.schemaIDs[name]; ok {
				v.Link, v.LinkAnchor = name, anchor
				b.siblings(v, sp.GetReferenceNode())
				return v
			}
		}
		v.Ref = ref
		if slices.Contains(stack, ref) || len(stack) >= maxDepth {
			v.Circular = true
			return v
		}
		stack = append(stack, ref)
	}
	s := sp.Schema()
	if s == nil {
		v.Raw = yamlText(sp.GetValueNode())
		v.RawKeys = []string{"(unreadable schema)"}
		return v
	}
	v.Title = s.Title
	v.Description = text(s.Description)
	v.Type = strings.Join(s.Type, " | ")
	if v.Type == "" {
		switch {
		case s.Properties != nil && s.Properties.Len() > 0 || s.AdditionalProperties != nil:
			v.Type = "object"
		case s.Items != nil:
			v.Type = "array"
		case len(s.AllOf)+len(s.OneOf)+len(s.AnyOf) == 0 && s.Const == nil && len(s.Enum) == 0:
			v.Type = "any"
		}
	}
	v.Format = s.Format
	for _, e := range s.Enum {
		v.Enum = append(v.Enum, inlineValue(e))
	}
	if s.Const != nil {
		v.Const = inlineValue(s.Const)
	}
	if s.Default != nil {
		v.Default = inlineValue(s.Default)
	}
	v.Constraints = constraints(s)
	v.Flags = flags(s)
	if s.Properties != nil {
		for name, p := range s.Properties.FromOldest() {
			v.Fields = append(v.Fields, fieldView{Name: name, Required: slices.Contains(s.Required, name), Schema: b.schema(p, stack)})
		}
	}
	// A required name without a property of its own (e.g. one an allOf part defines) is still said.
	for _, name := range s.Required {
		if s.Properties == nil || s.Properties.GetOrZero(name) == nil {
			v.Constraints = append(v.Constraints, "requires "+name)
		}
	}
	if ap := s.AdditionalProperties; ap != nil {
		switch {
		case ap.IsA() && ap.A != nil:
			v.Extra = b.schema(ap.A, stack)
		case ap.IsB() && ap.B:
			v.ExtraAny = true
		case ap.IsB():
			v.Closed = true
		}
	}
	if it := s.Items; it != nil {
		switch {
		case it.IsA() && it.A != nil:
			v.Items = b.schema(it.A, stack)
		case it.IsB() && !it.B:
			v.Constraints = append(v.Constraints, "no items")
		}
	}
	for _, c := range []struct {
		label string
		list  []*base.SchemaProxy
	}{{"All of", s.AllOf}, {"One of", s.OneOf}, {"Any of", s.AnyOf}} {
		if len(c.list) == 0 {
			continue
		}
		pv := partsView{Label: c.label}
		for _, p := range c.list {
			pv.Parts = append(pv.Parts, b.schema(p, stack))
		}
		v.Parts = append(v.Parts, pv)
	}
	b.unrendered(v, sp.GetValueNode())
	return v
}

// siblings shows what a $ref to a component carries beside it (OpenAPI 3.1 allows a description
// and other keywords there).
func (b *builder) siblings(v *schemaView, n *yaml.Node) {
	if n == nil || n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "description" {
			v.Description = text(n.Content[i+1].Value)
		}
	}
	v.Extras = extrasOf(n, keys("$ref", "description"))
}

func (b *builder) unrendered(v *schemaView, n *yaml.Node) { v.Extras = extrasOf(n, rendered) }

func constraints(s *base.Schema) []string {
	var out []string
	num := func(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
	if s.Minimum != nil {
		out = append(out, "≥ "+num(*s.Minimum))
	}
	if e := s.ExclusiveMinimum; e != nil {
		if e.IsB() {
			out = append(out, "> "+num(e.B))
		} else if e.A && s.Minimum != nil {
			out[len(out)-1] = "> " + num(*s.Minimum)
		}
	}
	if s.Maximum != nil {
		out = append(out, "≤ "+num(*s.Maximum))
	}
	if e := s.ExclusiveMaximum; e != nil {
		if e.IsB() {
			out = append(out, "< "+num(e.B))
		} else if e.A && s.Maximum != nil {
			out[len(out)-1] = "< " + num(*s.Maximum)
		}
	}
	if s.MultipleOf != nil {
		out = append(out, "multiple of "+num(*s.MultipleOf))
	}
	ints := []struct {
		label string
		v     *int64
	}{
		{"min length", s.MinLength}, {"max length", s.MaxLength}, {"min items", s.MinItems}, {"max items", s.MaxItems},
		{"min properties", s.MinProperties}, {"max properties", s.MaxProperties},
	}
	for _, c := range ints {
		if c.v != nil {
			out = append(out, fmt.Sprintf("%s %d", c.label, *c.v))
		}
	}
	if s.Pattern != "" {
		out = append(out, "pattern "+s.Pattern)
	}
	return out
}

func flags(s *base.Schema) []string {
	var out []string
	set := func(p *bool, label string) {
		if p != nil && *p {
			out = append(out, label)
		}
	}
	set(s.Nullable, "nullable")
	set(s.ReadOnly, "read-only")
	set(s.WriteOnly, "write-only")
	set(s.Deprecated, "deprecated")
	set(s.UniqueItems, "unique items")
	if s.ContentEncoding != "" {
		out = append(out, "encoding "+s.ContentEncoding)
	}
	if s.ContentMediaType != "" {
		out = append(out, "media type "+s.ContentMediaType)
	}
	return out
}

// inlineValue is a scalar or small value as JSON, the way enum values and defaults are written.
func inlineValue(n *yaml.Node) string {
	out, err := json.Marshal(nodeValue(n))
	if err != nil {
		return yamlText(n)
	}
	return string(out)
}

// jsonObject is a JSON object that keeps its keys' order when marshalled.
type jsonObject []jsonMember

type jsonMember struct {
	Key   string
	Value any
}

func (o jsonObject) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, err := json.Marshal(m.Key)
		if err != nil {
			return nil, err
		}
		val, err := json.Marshal(m.Value)
		if err != nil {
			return nil, err
		}
		buf.Write(k)
		buf.WriteByte(':')
		buf.Write(val)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func (o jsonObject) has(key string) bool {
	return slices.ContainsFunc(o, func(m jsonMember) bool { return m.Key == key })
}

// nodeValue converts a YAML value into one encoding/json writes in the same order.
func nodeValue(n *yaml.Node) any {
	for n != nil && (n.Kind == yaml.AliasNode || n.Kind == yaml.DocumentNode) {
		if n.Kind == yaml.AliasNode {
			n = n.Alias
		} else if len(n.Content) > 0 {
			n = n.Content[0]
		} else {
			return nil
		}
	}
	if n == nil {
		return nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		obj := jsonObject{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			obj = append(obj, jsonMember{n.Content[i].Value, nodeValue(n.Content[i+1])})
		}
		return obj
	case yaml.SequenceNode:
		list := []any{}
		for _, c := range n.Content {
			list = append(list, nodeValue(c))
		}
		return list
	}
	switch n.ShortTag() {
	case "!!null":
		return nil
	case "!!bool":
		return n.Value == "true" || n.Value == "True" || n.Value == "TRUE"
	case "!!int", "!!float":
		if f, err := strconv.ParseFloat(n.Value, 64); err == nil {
			return json.Number(strconv.FormatFloat(f, 'g', -1, 64))
		}
	}
	return n.Value
}

// namedExample is one example of a body, as the page shows it.
type namedExample struct{ Name, Text string }

// mediaExamples are the examples the page shows for a body: the document's own (example, and every
// one of examples) when it has them, otherwise, for JSON, one made from the schema.
func mediaExamples(typ string, m *v3.MediaType) []namedExample {
	var out []namedExample
	add := func(name string, v any) {
		if s, ok := v.(string); ok && !isJSON(typ) {
			out = append(out, namedExample{name, s})
			return
		}
		if b, err := json.MarshalIndent(v, "", "  "); err == nil {
			out = append(out, namedExample{name, string(b)})
		}
	}
	if m.Example != nil {
		add("", nodeValue(m.Example))
	}
	if m.Examples != nil {
		for name, ex := range m.Examples.FromOldest() {
			switch {
			case ex == nil:
			case ex.Value != nil:
				add(name, nodeValue(ex.Value))
			case ex.ExternalValue != "":
				out = append(out, namedExample{name, "(at " + ex.ExternalValue + ")"})
			}
		}
	}
	if len(out) == 0 && isJSON(typ) && m.Schema != nil {
		add("", exampleOf(m.Schema, nil))
	}
	return out
}

func isJSON(typ string) bool {
	typ, _, _ = strings.Cut(typ, ";")
	return typ == "application/json" || strings.HasSuffix(typ, "+json")
}

// exampleOf makes a value that fits the schema: its own example, const, default or first enum
// value, else a placeholder of its type; every property of an object, one item of an array. A
// reference already being expanded stops the recursion.
func exampleOf(sp *base.SchemaProxy, stack []string) any {
	if sp == nil {
		return nil
	}
	if sp.IsReference() {
		ref := sp.GetReference()
		if slices.Contains(stack, ref) || len(stack) >= maxDepth {
			return jsonObject{}
		}
		stack = append(stack, ref)
	}
	s := sp.Schema()
	if s == nil {
		return nil
	}
	switch {
	case s.Example != nil:
		return nodeValue(s.Example)
	case len(s.Examples) > 0:
		return nodeValue(s.Examples[0])
	case s.Const != nil:
		return nodeValue(s.Const)
	case s.Default != nil:
		return nodeValue(s.Default)
	case len(s.Enum) > 0:
		return nodeValue(s.Enum[0])
	}
	if len(s.AllOf) > 0 {
		obj := jsonObject{}
		for _, p := range s.AllOf {
			if part, ok := exampleOf(p, stack).(jsonObject); ok {
				for _, m := range part {
					if !obj.has(m.Key) {
						obj = append(obj, m)
					}
				}
			}
		}
		for _, m := range objectExample(s, stack) {
			if !obj.has(m.Key) {
				obj = append(obj, m)
			}
		}
		return obj
	}
	for _, alts := range [][]*base.SchemaProxy{s.OneOf, s.AnyOf} {
		for _, p := range alts {
			if ps := p.Schema(); ps != nil && len(ps.Type) == 1 && ps.Type[0] == "null" {
				continue // the interesting alternative is the other one
			}
			return exampleOf(p, stack)
		}
	}
	typ := ""
	for _, t := range s.Type {
		if t != "null" {
			typ = t
			break
		}
	}
	if typ == "" && (s.Properties != nil || s.AdditionalProperties != nil) {
		typ = "object"
	}
	if typ == "" && s.Items != nil {
		typ = "array"
	}
	switch typ {
	case "object":
		return objectExample(s, stack)
	case "array":
		if s.Items != nil && s.Items.IsA() && s.Items.A != nil {
			return []any{exampleOf(s.Items.A, stack)}
		}
		return []any{}
	case "string":
		return stringExample(s)
	case "integer", "number":
		if s.Minimum != nil {
			return json.Number(strconv.FormatFloat(*s.Minimum, 'g', -1, 64))
		}
		return json.Number("0")
	case "boolean":
		return false
	}
	return nil
}

func objectExample(s *base.Schema, stack []string) jsonObject {
	obj := jsonObject{}
	if s.Properties != nil {
		for name, p := range s.Properties.FromOldest() {
			obj = append(obj, jsonMember{name, exampleOf(p, stack)})
		}
	}
	if len(obj) == 0 && s.AdditionalProperties != nil && s.AdditionalProperties.IsA() && s.AdditionalProperties.A != nil {
		obj = append(obj, jsonMember{"key", exampleOf(s.AdditionalProperties.A, stack)})
	}
	return obj
}

func stringExample(s *base.Schema) string {
	switch {
	case s.ContentEncoding == "base64":
		return "aGVsbG8K" // "hello\n"
	case s.Format == "date-time":
		return "2026-01-02T15:04:05Z"
	case s.Format == "date":
		return "2026-01-02"
	case s.Format == "uri" || s.Format == "url":
		return "https://example.com/"
	}
	return "string"
}

// text renders a description: paragraphs at blank lines, `code` spans; everything else is text,
// escaped.
func text(s string) template.HTML {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	var b strings.Builder
	for _, para := range strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n\n") {
		para = strings.TrimSpace(para)
		if para == "" {
			continue
		}
		b.WriteString("<p>")
		parts := strings.Split(para, "`")
		for i, part := range parts {
			esc := template.HTMLEscapeString(part)
			switch {
			case i%2 == 1 && i < len(parts)-1:
				b.WriteString("<code>" + esc + "</code>")
			case i%2 == 1:
				b.WriteString("`" + esc) // an unmatched backtick stays as written
			default:
				b.WriteString(esc)
			}
		}
		b.WriteString("</p>")
	}
	return template.HTML(b.String())
}
