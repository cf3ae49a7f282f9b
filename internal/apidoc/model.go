package apidoc

import (
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"reflect"
	"sort"
	"strings"

	"github.com/pb33f/go-yaml"
	"github.com/pb33f/libopenapi"
	"github.com/pb33f/libopenapi/datamodel"
	"github.com/pb33f/libopenapi/datamodel/high/base"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
	"github.com/pb33f/libopenapi/orderedmap"
)

// Options say what the page is titled and what it links to.
type Options struct {
	// Version is the product's version (the VERSION file), shown in the title; empty shows none.
	Version string
	// SpecHref is the relative link to the OpenAPI file published beside the page; empty leaves the
	// link out.
	SpecHref string
}

// The keys the page renders of each kind of object; any other is shown as written (Extras).
var (
	docKeys       = keys("openapi", "info", "servers", "security", "tags", "paths", "components")
	infoKeys      = keys("title", "version", "description")
	componentKeys = keys("schemas", "securitySchemes", "parameters", "responses", "requestBodies", "headers", "examples")
	pathKeys      = keys("$ref", "parameters", "get", "put", "post", "delete", "options", "head", "patch", "trace")
	opKeys        = keys("tags", "summary", "description", "operationId", "parameters", "requestBody", "responses", "security", "deprecated")
	paramKeys     = keys("$ref", "name", "in", "required", "description", "schema", "deprecated")
	bodyKeys      = keys("$ref", "description", "content", "required")
	responseKeys  = keys("$ref", "description", "headers", "content")
	headerKeys    = keys("$ref", "description", "schema", "required", "deprecated")
	mediaKeys     = keys("schema", "example", "examples")
	authKeys      = keys("$ref", "type", "scheme", "name", "in", "description")
)

// untagged is the group of operations that carry no tag.
const untagged = "Other operations"

// page is what the template renders.
type page struct {
	Title       string
	Version     string
	APIVersion  string
	OpenAPI     string
	SpecHref    string
	Description template.HTML
	Servers     []string
	Auth        []authView
	Groups      []groupView
	Schemas     []namedSchema
	CSS         template.CSS
	Extras      // of the document's top level and info
}

type authView struct {
	Name, Anchor, Kind string
	Description        template.HTML
	Extras
}

type groupView struct {
	Name, Anchor string
	Description  template.HTML
	Ops          []opView
}

type opView struct {
	Anchor, Method, Path, Summary string
	Description                   template.HTML
	Deprecated                    bool
	Params                        []paramView
	Body                          *bodyView
	Responses                     []responseView
	// Auth lists the alternatives (any one suffices); NoAuth is set when the operation needs none.
	Auth   []authRef
	NoAuth bool
	Extras
}

type authRef struct{ Name, Anchor string }

type paramView struct {
	Name, In    string
	Required    bool
	Deprecated  bool
	Description template.HTML
	Schema      *schemaView
	Extras
}

type bodyView struct {
	Required    bool
	Description template.HTML
	Media       []mediaView
	Extras
}

type mediaView struct {
	Type     string
	Schema   *schemaView
	Examples []namedExample
	Extras
}

type responseView struct {
	// Codes share one entry when their responses are the same (the many codes of one error object).
	Codes       []string
	Description template.HTML
	Headers     []paramView
	Media       []mediaView
	Extras
}

type namedSchema struct {
	Name, Anchor string
	Schema       *schemaView
}

// Render reads an OpenAPI 3.x document and writes its HTML reference to w. A reference that does
// not resolve, or a document libopenapi cannot build, is an error and nothing is written.
func Render(w io.Writer, spec []byte, opts Options) error {
	p, err := build(spec, opts)
	if err != nil {
		return err
	}
	var buf strings.Builder
	if err := pageTemplate.Execute(&buf, p); err != nil {
		return fmt.Errorf("apidoc: render: %w", err)
	}
	_, err = io.WriteString(w, buf.String())
	return err
}

func build(spec []byte, opts Options) (*page, error) {
	cfg := datamodel.NewDocumentConfiguration()
	// libopenapi logs what it cannot resolve as it goes; its errors come back from BuildV3Model, and
	// ours (checkRefs) name every bad reference first, so its log would only repeat them.
	cfg.Logger = slog.New(slog.DiscardHandler)
	doc, err := libopenapi.NewDocumentWithConfiguration(spec, cfg)
	if err != nil {
		return nil, fmt.Errorf("apidoc: read openapi: %w", err)
	}
	root := doc.GetSpecInfo().RootNode
	if err := checkRefs(root); err != nil {
		return nil, fmt.Errorf("apidoc: unresolved references:\n%w", err)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		return nil, fmt.Errorf("apidoc: build openapi model: %w", err)
	}
	if model == nil {
		return nil, errors.New("apidoc: build openapi model: no model")
	}
	d := &model.Model
	b := &builder{ids: anchors{}, schemaIDs: map[string]string{}}
	if d.Components != nil && d.Components.Schemas != nil {
		// Anchors of every schema first, so that a field may link to a schema defined below it.
		for name := range d.Components.Schemas.KeysFromOldest() {
			b.schemaIDs[name] = b.ids.unique(schemaAnchor(name))
		}
	}
	p := &page{OpenAPI: d.Version, SpecHref: opts.SpecHref, Version: opts.Version, CSS: template.CSS(styleCSS)}
	top := root
	if top != nil && top.Kind == yaml.DocumentNode && len(top.Content) == 1 {
		top = top.Content[0]
	}
	info, _ := child(top, "info")
	components, _ := child(top, "components")
	p.Extras = extrasOfParts(extraPart{"", top, docKeys}, extraPart{"info.", info, infoKeys},
		extraPart{"components.", components, componentKeys})
	p.Title = "API reference"
	if d.Info != nil {
		if d.Info.Title != "" {
			p.Title = d.Info.Title + " API reference"
		}
		p.APIVersion = d.Info.Version
		p.Description = text(d.Info.Description)
	}
	if opts.Version != "" {
		p.Title += " " + opts.Version
	}
	for _, s := range d.Servers {
		p.Servers = append(p.Servers, s.URL)
	}
	authIDs := map[string]string{}
	if d.Components != nil && d.Components.SecuritySchemes != nil {
		for name, s := range d.Components.SecuritySchemes.FromOldest() {
			a := authView{Name: name, Anchor: b.ids.unique("auth-" + escapeID(name)), Kind: authKind(s), Description: text(s.Description)}
			if low := s.GoLow(); low != nil {
				a.Extras = extrasOf(low.RootNode, authKeys)
			}
			authIDs[name] = a.Anchor
			p.Auth = append(p.Auth, a)
		}
	}
	b.authIDs = authIDs
	global := b.security(d.Security)

	p.Groups = b.operations(d, global)
	if d.Components != nil && d.Components.Schemas != nil {
		for name, sp := range d.Components.Schemas.FromOldest() {
			// A component that is itself a $ref renders as the link (an alias), like any other.
			p.Schemas = append(p.Schemas, namedSchema{Name: name, Anchor: b.schemaIDs[name], Schema: b.schema(sp, nil)})
		}
	}
	return p, nil
}

type builder struct {
	ids       anchors
	schemaIDs map[string]string // component schema name → its anchor
	authIDs   map[string]string // security scheme name → its anchor
}

func authKind(s *v3.SecurityScheme) string {
	switch s.Type {
	case "http":
		return "HTTP " + s.Scheme + " (Authorization: " + titleCase(s.Scheme) + " <key>)"
	case "apiKey":
		return "API key in " + s.In + " " + s.Name
	}
	return s.Type
}

func titleCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// security turns requirements into the alternatives a reader may use; an empty list means none is
// needed. An alternative naming several schemes (all needed together) is shown as one joined by +.
func (b *builder) security(reqs []*base.SecurityRequirement) []authRef {
	var out []authRef
	anonymous := false
	for _, r := range reqs {
		var names []string
		if r != nil && r.Requirements != nil {
			for name := range r.Requirements.KeysFromOldest() {
				names = append(names, name)
			}
		}
		if len(names) == 0 {
			anonymous = true // {}: no credentials is one of the alternatives
			continue
		}
		ref := authRef{Name: strings.Join(names, " + ")}
		if len(names) == 1 {
			ref.Anchor = b.authIDs[names[0]]
		}
		out = append(out, ref)
	}
	if anonymous && len(out) > 0 {
		out = append(out, authRef{Name: "none"})
	}
	return out
}

func (b *builder) operations(d *v3.Document, global []authRef) []groupView {
	var order []string
	groups := map[string]*groupView{}
	group := func(name string) *groupView {
		if g, ok := groups[name]; ok {
			return g
		}
		g := &groupView{Name: name, Anchor: b.ids.unique("tag-" + slug(name))}
		groups[name] = g
		order = append(order, name)
		return g
	}
	for _, t := range d.Tags {
		group(t.Name).Description = text(t.Description)
	}
	if d.Paths == nil || d.Paths.PathItems == nil {
		return nil
	}
	for path, item := range d.Paths.PathItems.FromOldest() {
		for method, op := range item.GetOperations().FromOldest() {
			v := opView{Method: strings.ToUpper(method), Path: path, Summary: op.Summary, Description: text(op.Description)}
			v.Deprecated = op.Deprecated != nil && *op.Deprecated
			if op.OperationId != "" {
				v.Anchor = b.ids.unique("op-" + escapeID(op.OperationId))
			} else {
				v.Anchor = b.ids.unique("op-" + method + "-" + slug(path))
			}
			v.Params = b.params(item.Parameters, op.Parameters)
			if op.RequestBody != nil {
				v.Body = &bodyView{Required: op.RequestBody.Required != nil && *op.RequestBody.Required,
					Description: text(op.RequestBody.Description), Media: b.media(op.RequestBody.Content)}
				if low := op.RequestBody.GoLow(); low != nil {
					v.Body.Extras = extrasOf(low.RootNode, bodyKeys)
				}
			}
			if low := op.GoLow(); low != nil {
				var itemNode *yaml.Node
				if il := item.GoLow(); il != nil {
					itemNode = il.RootNode
				}
				v.Extras = extrasOfParts(extraPart{"", low.RootNode, opKeys}, extraPart{"path item: ", itemNode, pathKeys})
			}
			v.Responses = b.responses(op.Responses)
			v.Auth = global
			if low := op.GoLow(); low != nil && !low.Security.IsEmpty() {
				v.Auth = b.security(op.Security)
			}
			v.NoAuth = len(v.Auth) == 0
			name := untagged
			if len(op.Tags) > 0 {
				name = op.Tags[0]
			}
			g := group(name)
			g.Ops = append(g.Ops, v)
		}
	}
	out := make([]groupView, 0, len(order))
	var rest *groupView
	for _, name := range order {
		g := groups[name]
		if name == untagged && len(d.Tags) > 0 {
			rest = g // declared tags first, the untagged at the end
			continue
		}
		if len(g.Ops) > 0 || g.Description != "" {
			out = append(out, *g)
		}
	}
	if rest != nil {
		out = append(out, *rest)
	}
	return out
}

// params merges the path's parameters with the operation's (which override by name and location),
// path first, then query, header and cookie, each in document order.
func (b *builder) params(pathLevel, opLevel []*v3.Parameter) []paramView {
	type key struct{ name, in string }
	var all []*v3.Parameter
	seen := map[key]int{}
	for _, list := range [][]*v3.Parameter{pathLevel, opLevel} {
		for _, p := range list {
			if p == nil {
				continue
			}
			k := key{p.Name, p.In}
			if i, ok := seen[k]; ok {
				all[i] = p
				continue
			}
			seen[k] = len(all)
			all = append(all, p)
		}
	}
	rank := map[string]int{"path": 0, "query": 1, "header": 2, "cookie": 3}
	sort.SliceStable(all, func(i, j int) bool { return rank[all[i].In] < rank[all[j].In] })
	out := make([]paramView, 0, len(all))
	for _, p := range all {
		v := paramView{Name: p.Name, In: p.In, Required: p.Required != nil && *p.Required, Deprecated: p.Deprecated,
			Description: text(p.Description)}
		if p.Schema != nil {
			v.Schema = b.schema(p.Schema, nil)
		}
		if low := p.GoLow(); low != nil {
			v.Extras = extrasOf(low.RootNode, paramKeys)
		}
		out = append(out, v)
	}
	return out
}

func (b *builder) media(content *orderedmap.Map[string, *v3.MediaType]) []mediaView {
	if content == nil {
		return nil
	}
	var out []mediaView
	for typ, m := range content.FromOldest() {
		v := mediaView{Type: typ}
		if m.Schema != nil {
			v.Schema = b.schema(m.Schema, nil)
		}
		v.Examples = mediaExamples(typ, m)
		if low := m.GoLow(); low != nil {
			v.Extras = extrasOf(low.RootNode, mediaKeys)
		}
		out = append(out, v)
	}
	return out
}

// responses lists every code in ascending order (1XX-style ranges after their codes), default last.
func (b *builder) responses(rs *v3.Responses) []responseView {
	if rs == nil {
		return nil
	}
	var out []responseView
	if rs.Codes != nil {
		for code, r := range rs.Codes.FromOldest() {
			out = append(out, b.response(code, r))
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return strings.ToUpper(out[i].Codes[0]) < strings.ToUpper(out[j].Codes[0]) })
	if rs.Default != nil {
		out = append(out, b.response("default", rs.Default))
	}
	return mergeSame(out)
}

// mergeSame folds each response into the first one that shows the same thing, keeping its code.
func mergeSame(rs []responseView) []responseView {
	var out []responseView
next:
	for _, r := range rs {
		for i := range out {
			a, b := out[i], r
			a.Codes, b.Codes = nil, nil
			if reflect.DeepEqual(a, b) {
				out[i].Codes = append(out[i].Codes, r.Codes...)
				continue next
			}
		}
		out = append(out, r)
	}
	return out
}

func (b *builder) response(code string, r *v3.Response) responseView {
	v := responseView{Codes: []string{code}, Description: text(r.Description)}
	if low := r.GoLow(); low != nil {
		v.Extras = extrasOf(low.RootNode, responseKeys)
	}
	if r.Headers != nil {
		for name, h := range r.Headers.FromOldest() {
			hv := paramView{Name: name, In: "header", Required: h.Required, Deprecated: h.Deprecated, Description: text(h.Description)}
			if h.Schema != nil {
				hv.Schema = b.schema(h.Schema, nil)
			}
			if low := h.GoLow(); low != nil {
				hv.Extras = extrasOf(low.RootNode, headerKeys)
			}
			v.Headers = append(v.Headers, hv)
		}
	}
	if r.Content != nil {
		v.Media = b.media(r.Content)
	}
	return v
}

// yamlText is a node as YAML, for values the page shows as written.
func yamlText(n *yaml.Node) string {
	out, err := yaml.Marshal(n)
	if err != nil {
		return fmt.Sprintf("(cannot show: %v)", err)
	}
	return strings.TrimRight(string(out), "\n")
}
