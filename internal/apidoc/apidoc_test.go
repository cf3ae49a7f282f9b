package apidoc

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pb33f/go-yaml"
	"golang.org/x/net/html"
)

// contract is the real API contract the reference is made from.
func contract(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "server", "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func render(t testing.TB, spec []byte, opts Options) string {
	t.Helper()
	var buf bytes.Buffer
	if err := Render(&buf, spec, opts); err != nil {
		t.Fatalf("Render: %v", err)
	}
	return buf.String()
}

// parsed is what the tests read back from a page.
type parsed struct {
	ids      map[string]int // id → how many elements carry it
	links    []string       // every href="#..." without the #
	articles []article
}

type article struct {
	id, class, heading string // heading: the h3's text, permalink "#" removed
}

func parse(t testing.TB, page string) parsed {
	t.Helper()
	root, err := html.Parse(strings.NewReader(page))
	if err != nil {
		t.Fatalf("parse output: %v", err)
	}
	p := parsed{ids: map[string]int{}}
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			if id := attr(n, "id"); id != "" {
				p.ids[id]++
			}
			if href := attr(n, "href"); strings.HasPrefix(href, "#") {
				p.links = append(p.links, strings.TrimPrefix(href, "#"))
			}
			if n.Data == "article" {
				a := article{id: attr(n, "id"), class: attr(n, "class")}
				if h := find(n, "h3"); h != nil {
					a.heading = strings.Join(strings.Fields(strings.TrimPrefix(strings.TrimSpace(textOf(h)), "#")), " ")
				}
				p.articles = append(p.articles, a)
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(root)
	return p
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func find(n *html.Node, tag string) *html.Node {
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && c.Data == tag {
			return c
		}
		if f := find(c, tag); f != nil {
			return f
		}
	}
	return nil
}

func textOf(n *html.Node) string {
	if n.Type == html.TextNode {
		return n.Data
	}
	var b strings.Builder
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		b.WriteString(textOf(c))
	}
	return b.String()
}

// operationsOf lists "METHOD path" of every operation, read from the YAML independently of libopenapi.
func operationsOf(t testing.TB, spec []byte) (ops, schemas []string) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(spec, &doc); err != nil {
		t.Fatal(err)
	}
	methods := []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}
	if paths, err := child(doc.Content[0], "paths"); err == nil {
		for i := 0; i+1 < len(paths.Content); i += 2 {
			item := paths.Content[i+1]
			for j := 0; j+1 < len(item.Content); j += 2 {
				if m := item.Content[j].Value; slices.Contains(methods, m) {
					ops = append(ops, strings.ToUpper(m)+" "+paths.Content[i].Value)
				}
			}
		}
	}
	if s, err := resolveRef(&doc, "#/components/schemas"); err == nil {
		for i := 0; i+1 < len(s.Content); i += 2 {
			schemas = append(schemas, s.Content[i].Value)
		}
	}
	return ops, schemas
}

func TestEveryOperationAndSchemaOfTheContractHasAnAnchor(t *testing.T) {
	spec := contract(t)
	p := parse(t, render(t, spec, Options{Version: "0.2.0"}))
	wantOps, wantSchemas := operationsOf(t, spec)
	if len(wantOps) < 30 || len(wantSchemas) < 30 {
		t.Fatalf("read %d operations and %d schemas from the contract; expected the whole API", len(wantOps), len(wantSchemas))
	}
	got := map[string]map[string]string{"op": {}, "schema": {}} // class → heading → id
	for _, a := range p.articles {
		if a.id == "" {
			t.Errorf("article %q has no anchor", a.heading)
		}
		if got[a.class] != nil {
			got[a.class][a.heading] = a.id
		}
	}
	linked := map[string]bool{}
	for _, l := range p.links {
		linked[l] = true
	}
	for _, tc := range []struct {
		kind  string
		names []string
	}{{"op", wantOps}, {"schema", wantSchemas}} {
		t.Run(tc.kind, func(t *testing.T) {
			for _, name := range tc.names {
				id, ok := got[tc.kind][name]
				switch {
				case !ok:
					t.Errorf("%s %q is not on the page", tc.kind, name)
				case !linked[id]:
					t.Errorf("%s %q (#%s) is not linked from the contents", tc.kind, name, id)
				}
			}
			if len(got[tc.kind]) != len(tc.names) {
				t.Errorf("page has %d %s sections, the contract %d", len(got[tc.kind]), tc.kind, len(tc.names))
			}
		})
	}
}

// constructs is a small contract with what the real one does not (yet) use.
const constructs = `openapi: 3.1.0
info: {title: demo, version: "2", description: "Top <b>bold</b>", license: {name: MIT}}
x-logo: pets.png
tags:
  - {name: Pets, description: "All about pets"}
security: [{key: []}]
paths:
  /pets/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
    get:
      tags: [Pets]
      operationId: getPet
      x-codegen: skip
      parameters:
        - {name: verbose, in: query, style: form, schema: {type: boolean, default: false}}
      responses:
        "200":
          description: The pet
          links:
            owner: {operationId: getPet}
          headers:
            X-Rate: {description: calls left, schema: {type: integer}}
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Pet"}
        "404": {description: Unknown}
        "401": {description: Unknown}
        default: {description: Anything else}
  /pets:
    post:
      tags: [Pets]
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/NewPet"}
      responses:
        "201": {description: Made}
  /ping:
    get:
      security: []
      responses:
        "204": {description: Pong}
  /pets-list:
    get:
      tags: [Zoo]
      security: [{key: []}, {}]
      responses:
        "200":
          description: ok
          content:
            application/json:
              example: {pets: [rex]}
              schema: {type: object}
            application/x-www-form-urlencoded:
              schema: {type: object, properties: {a: {type: string}}}
              encoding: {a: {contentType: text/plain}}
              examples:
                first: {value: {a: one}}
                second: {value: {a: two}}
components:
  securitySchemes:
    key: {type: apiKey, in: header, name: X-Key, x-rotates: daily}
  schemas:
    Pet:
      allOf:
        - {$ref: "#/components/schemas/NewPet"}
        - type: object
          required: [id]
          properties:
            id: {type: string, format: uuid}
    NewPet:
      type: object
      required: [name, kind]
      properties:
        name: {type: string, minLength: 1, maxLength: 40}
        kind: {type: string, enum: [cat, dog]}
        owner: {$ref: "#/components/schemas/Owner", description: who feeds it}
        tags: {type: object, additionalProperties: {type: string}}
        friend: {$ref: "#/components/schemas/Pet"}
    Owner:
      oneOf:
        - {type: "null"}
        - type: object
          properties:
            email: {type: string, format: email}
    Id:
      anyOf:
        - {type: string}
        - {type: integer, minimum: 1}
    Odd:
      type: object
      not: {type: string}
      x-internal: true
      patternProperties:
        "^x-": {type: string}
`

func TestInternalLinksResolve(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec []byte
	}{{"contract", contract(t)}, {"constructs", []byte(constructs)}} {
		t.Run(tc.name, func(t *testing.T) {
			p := parse(t, render(t, tc.spec, Options{Version: "1.0.0", SpecHref: "openapi.yaml"}))
			if len(p.links) == 0 {
				t.Fatal("no internal links")
			}
			for _, l := range p.links {
				if p.ids[l] == 0 {
					t.Errorf("link #%s has no target", l)
				}
			}
			for id, n := range p.ids {
				if n > 1 {
					t.Errorf("id %q is used %d times", id, n)
				}
			}
		})
	}
}

func TestUnresolvedReferenceIsAnErrorNamingIt(t *testing.T) {
	base := func(schema, extra string) string {
		return `openapi: 3.1.0
info: {title: t, version: "1"}
paths:
  /a:
    get:
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: ` + schema + `
components:
  schemas:
    A: {type: string}
` + extra
	}
	for _, tc := range []struct {
		name, spec string
		want       []string
	}{
		{"response schema", base(`{$ref: "#/components/schemas/Missing"}`, ""), []string{`"#/components/schemas/Missing"`, "line 11"}},
		{"property", base(`{$ref: "#/components/schemas/A"}`, "    B: {type: object, properties: {c: {$ref: \"#/components/schemas/Nope\"}}}\n"),
			[]string{`"#/components/schemas/Nope"`, `"Nope" does not exist`, "line 15"}},
		{"allOf part", base(`{allOf: [{$ref: "#/components/schemas/A"}, {$ref: "#/components/schemas/Gone"}]}`, ""), []string{`"#/components/schemas/Gone"`}},
		{"two at once", base(`{$ref: "#/components/schemas/X1"}`, "    B: {$ref: \"#/components/schemas/X2\"}\n"), []string{"X1", "X2"}},
		{"other file", base(`{$ref: "other.yaml#/components/schemas/A"}`, ""), []string{`"other.yaml#/components/schemas/A"`, "inside the document"}},
		{"not a pointer", base(`{$ref: "#components"}`, ""), []string{`"#components"`, "not a JSON pointer"}},
		{"array index", base(`{$ref: "#/paths/~1a/get/parameters/0"}`, ""), []string{`"#/paths/~1a/get/parameters/0"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := Render(&buf, []byte(tc.spec), Options{})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes despite the error", buf.Len())
			}
		})
	}
}

func TestSameInputSameBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec []byte
	}{{"contract", contract(t)}, {"constructs", []byte(constructs)}} {
		t.Run(tc.name, func(t *testing.T) {
			first := render(t, tc.spec, Options{Version: "0.2.0"})
			for i := 0; i < 5; i++ {
				if again := render(t, tc.spec, Options{Version: "0.2.0"}); again != first {
					t.Fatalf("render %d differs from the first", i+2)
				}
			}
		})
	}
}

func TestDescriptionsAreEscaped(t *testing.T) {
	const evil = "<script>alert(1)</script>"
	for _, tc := range []struct{ name, spec string }{
		{"info", strings.Replace(constructs, "Top <b>bold</b>", evil, 1)},
		{"tag", strings.Replace(constructs, "All about pets", evil, 1)},
		{"in a code span", strings.Replace(constructs, "Top <b>bold</b>", "run `"+evil+"` now", 1)},
		{"response", strings.Replace(constructs, "description: The pet", "description: '"+evil+"'", 1)},
		{"header", strings.Replace(constructs, "calls left", "'"+evil+"'", 1)},
		{"sibling of a $ref", strings.Replace(constructs, "who feeds it", "'"+evil+"'", 1)},
		{"enum value", strings.Replace(constructs, "[cat, dog]", "[cat, '"+evil+"']", 1)},
		{"property name", strings.Replace(constructs, "email: {type: string", "'"+evil+"': {type: string", 1)},
		{"summary", strings.Replace(constructs, "operationId: getPet", "operationId: getPet\n      summary: '"+evil+"'", 1)},
		{"unrendered keyword", strings.Replace(constructs, "x-internal: true", "x-internal: '"+evil+"'", 1)},
		{"example", strings.Replace(constructs, "[rex]", "['"+evil+"']", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.spec == constructs {
				t.Fatal("the test did not change the document")
			}
			page := render(t, []byte(tc.spec), Options{})
			if strings.Contains(page, "<script") {
				t.Errorf("a <script> came out unescaped")
			}
			if !strings.Contains(page, "&lt;script&gt;") && !strings.Contains(page, `\u003cscript\u003e`) {
				t.Errorf("the text is not on the page, escaped")
			}
		})
	}
}

// section is the page's text from the element with the id to the next article or section.
func section(t *testing.T, page, id string) string {
	t.Helper()
	i := strings.Index(page, `id="`+id+`"`)
	if i < 0 {
		t.Fatalf("no #%s", id)
	}
	rest := page[i:]
	if j := strings.Index(rest[1:], "<article"); j >= 0 {
		rest = rest[:j+1]
	}
	return rest
}

func TestSchemaConstructsAreRendered(t *testing.T) {
	page := render(t, []byte(constructs), Options{})
	for _, tc := range []struct {
		name, id string
		want     []string
	}{
		{"allOf lists its parts, the reference as a link", "schema-Pet", []string{"All of:", `href="#schema-NewPet"`, "<code>id</code> <span class=\"req\">required</span>", "(uuid)"}},
		{"oneOf with null", "schema-Owner", []string{"One of:", "<code>null</code>", "<code>email</code>", "(email)"}},
		{"anyOf", "schema-Id", []string{"Any of:", "<code>integer</code>", "≥ 1"}},
		{"required, enum and constraints", "schema-NewPet", []string{"<code>name</code> <span class=\"req\">required</span>", "min length 1; max length 40", "One of: <code>&#34;cat&#34;</code>, <code>&#34;dog&#34;</code>"}},
		{"a $ref with a description beside it", "schema-NewPet", []string{`href="#schema-Owner"`, "who feeds it"}},
		{"a map", "schema-NewPet", []string{"map of <code>string</code>"}},
		{"a self-reference is a link", "schema-NewPet", []string{`href="#schema-Pet"`}},
		{"unknown keywords are shown as written", "schema-Odd", []string{"Not rendered by this page, shown as written: not, x-internal, patternProperties", "not: {type: string}", "x-internal: true", "^x-"}},
		{"path and query parameters, operation id anchor", "op-getPet", []string{"<code>id</code> <span class=\"req\">required</span></td><td>path", "<code>verbose</code></td><td>query", "Default <code>false</code>"}},
		{"responses in order with headers, default last", "op-getPet", []string{"200</span>", "X-Rate", "calls left"}},
		{"identical responses share one entry", "op-getPet", []string{`<span class="code code-4">401</span> <span class="code code-4">404</span>`}},
		{"unrendered document keys", "overview", []string{"x-logo, info.license", "x-logo: pets.png"}},
		{"unrendered operation keys", "op-getPet", []string{"shown as written: x-codegen", "x-codegen: skip"}},
		{"unrendered parameter keys", "op-getPet", []string{"shown as written: style", "style: form"}},
		{"unrendered response keys", "op-getPet", []string{"shown as written: links", "operationId: getPet"}},
		{"unrendered media keys and every named example", "op-get-pets-list", []string{"shown as written: encoding", "contentType: text/plain", "Example: first", "Example: second", "two"}},
		{"unrendered security scheme keys", "auth-key", []string{"shown as written: x-rotates"}},
		{"authentication inherited", "op-getPet", []string{`Authentication: <a href="#auth-key">key</a>`}},
		{"authentication optional", "op-get-pets-list", []string{`Authentication: <a href="#auth-key">key</a> or none`}},
		{"authentication turned off", "op-get-ping", []string{"Authentication: none"}},
		{"request body with an example made from the schema", "op-post-pets", []string{"Request body <span class=\"req\">required</span>", "&#34;kind&#34;: &#34;cat&#34;", "&#34;friend&#34;: {"}},
		{"the document's own example", "op-get-pets-list", []string{"&#34;rex&#34;"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := section(t, page, tc.id)
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("#%s lacks %q", tc.id, w)
				}
			}
		})
	}
	t.Run("responses sorted, default last", func(t *testing.T) {
		s := section(t, page, "op-getPet")
		i200, i404, idef := strings.Index(s, ">200<"), strings.Index(s, ">404<"), strings.Index(s, ">default<")
		if i200 < 0 || i404 < i200 || idef < i404 {
			t.Errorf("codes at %d, %d, %d: want 200, 404, default in that order", i200, i404, idef)
		}
	})
}

func TestOperationsAreGroupedByTag(t *testing.T) {
	page := render(t, []byte(constructs), Options{})
	var groups []string
	for _, m := range strings.Split(page, `<section id="tag-`)[1:] {
		groups = append(groups, m[:strings.Index(m, `"`)])
	}
	// Declared tags in their order, undeclared ones as met, operations without a tag last.
	if want := []string{"pets", "zoo", "other-operations"}; !slices.Equal(groups, want) {
		t.Fatalf("groups %v, want %v", groups, want)
	}
	for _, tc := range []struct{ group, op string }{{"pets", "op-getPet"}, {"pets", "op-post-pets"}, {"zoo", "op-get-pets-list"}, {"other-operations", "op-get-ping"}} {
		t.Run(tc.op, func(t *testing.T) {
			g := page[strings.Index(page, `<section id="tag-`+tc.group+`"`):]
			g = g[:strings.Index(g, "</section>")]
			if !strings.Contains(g, `<article id="`+tc.op+`"`) {
				t.Errorf("%s is not in group %s", tc.op, tc.group)
			}
		})
	}
	t.Run("the contract tags every operation", func(t *testing.T) {
		if strings.Contains(render(t, contract(t), Options{}), `id="tag-other-operations"`) {
			t.Error("an operation of openapi.yaml has no tag")
		}
	})
}

func TestTitleCarriesTheVersion(t *testing.T) {
	for _, tc := range []struct{ version, want string }{
		{"0.2.0", "<title>demo API reference 0.2.0</title>"},
		{"", "<title>demo API reference</title>"},
	} {
		t.Run(tc.version, func(t *testing.T) {
			if page := render(t, []byte(constructs), Options{Version: tc.version}); !strings.Contains(page, tc.want) {
				t.Errorf("no %q", tc.want)
			}
		})
	}
}

func TestPageNeedsNothingFromOutside(t *testing.T) {
	page := render(t, contract(t), Options{SpecHref: "openapi.yaml"})
	for _, bad := range []string{"<script", "<link", "@import", "http://fonts", "https://", "src="} {
		if strings.Contains(page, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
}

func TestExamplesAreValidJSON(t *testing.T) {
	page := render(t, contract(t), Options{})
	n := 0
	for _, part := range strings.Split(page, `<details class="example"><summary>Example</summary><pre>`)[1:] {
		raw := html.UnescapeString(part[:strings.Index(part, "</pre>")])
		var v any
		if err := json.Unmarshal([]byte(raw), &v); err != nil {
			t.Errorf("example is not JSON (%v): %.200s", err, raw)
		}
		n++
	}
	if n < 20 {
		t.Errorf("only %d examples on the page", n)
	}
}

func TestBadDocumentsAreClearErrors(t *testing.T) {
	for _, tc := range []struct{ name, spec, want string }{
		{"empty", "", "apidoc: read openapi"},
		{"not YAML", "{{{", "apidoc: read openapi"},
		{"Swagger 2.0", "swagger: \"2.0\"\ninfo: {title: t, version: \"1\"}\npaths: {}\n", "apidoc: build openapi model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := Render(&buf, []byte(tc.spec), Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes despite the error", buf.Len())
			}
		})
	}
}
