package apidoc

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/doc"
	"go/format"
	"go/parser"
	"go/token"
	"html/template"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
)

// GoPackage is one Go package for the SDK page: its directory (for its Example tests) and what
// `go doc -all` prints for it.
type GoPackage struct {
	Dir     string
	DocText string
}

type goPage struct {
	Title    string
	CSS      template.CSS
	Packages []goPkgView
}

type goPkgView struct {
	Name, ImportPath, Anchor string
	Blocks                   []goBlock // the go doc text, cut where a type or function starts
	Examples                 []exampleView
}

// goBlock is a run of go doc text; from the second on each starts with the declaration of Name.
type goBlock struct {
	Name, Anchor string
	IsType       bool // listed in the contents (methods and functions are reached from their type)
	Text         string
}

type exampleView struct {
	Name, Anchor, Doc, Code, Output string
	Unordered                       bool
}

var goTemplate = template.Must(template.New("go").Funcs(template.FuncMap{"lower": strings.ToLower}).Parse(goHTML))

// RenderGo writes the Go SDK's page: per package the text of `go doc -all` and every Example test
// in the package's directory with its code and expected output.
func RenderGo(w io.Writer, version string, pkgs []GoPackage) error {
	p := goPage{Title: "agentbox Go SDK", CSS: template.CSS(styleCSS)}
	if version != "" {
		p.Title += " " + version
	}
	ids := anchors{}
	for _, pkg := range pkgs {
		v, err := goPackage(pkg, ids)
		if err != nil {
			return err
		}
		p.Packages = append(p.Packages, v)
	}
	var buf bytes.Buffer
	if err := goTemplate.Execute(&buf, p); err != nil {
		return fmt.Errorf("apidoc: render go page: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}

func goPackage(pkg GoPackage, ids anchors) (goPkgView, error) {
	v := goPkgView{}
	// `go doc` starts with: package agentbox // import "github.com/entersandbox/agentbox"
	first, _, _ := strings.Cut(pkg.DocText, "\n")
	decl, imp, _ := strings.Cut(first, "//")
	name, ok := strings.CutPrefix(strings.TrimSpace(decl), "package ")
	if !ok {
		return v, fmt.Errorf("apidoc: %s: the go doc text does not start with a package clause: %q", pkg.Dir, first)
	}
	v.Name = name
	v.ImportPath = strings.Trim(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(imp), "import")), `"`)
	v.Anchor = ids.unique("pkg-" + escapeID(name))
	v.Blocks = goBlocks(pkg.DocText, "go-"+escapeID(name)+"-", ids)
	files, err := filepath.Glob(filepath.Join(pkg.Dir, "*_test.go"))
	if err != nil {
		return v, fmt.Errorf("apidoc: list tests of %s: %w", pkg.Dir, err)
	}
	sort.Strings(files)
	fset := token.NewFileSet()
	var parsed []*ast.File
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.ParseComments)
		if err != nil {
			return v, fmt.Errorf("apidoc: parse %s: %w", f, err)
		}
		parsed = append(parsed, af)
	}
	exs := doc.Examples(parsed...)
	sort.Slice(exs, func(i, j int) bool { return exs[i].Name < exs[j].Name })
	for _, ex := range exs {
		code, err := exampleCode(fset, ex)
		if err != nil {
			return v, fmt.Errorf("apidoc: example %s of %s: %w", ex.Name, pkg.Dir, err)
		}
		v.Examples = append(v.Examples, exampleView{
			Name: exampleTitle(ex.Name), Anchor: ids.unique("example-" + escapeID(name) + "-" + escapeID(ex.Name)),
			Doc: strings.TrimSpace(ex.Doc), Code: code, Output: ex.Output, Unordered: ex.Unordered,
		})
	}
	return v, nil
}

// goBlocks cuts go doc text before each top-level "type T", "func F(" and "func (r *T) M(" line,
// so that each can have an anchor (T, F, T.M).
func goBlocks(text, prefix string, ids anchors) []goBlock {
	blocks := []goBlock{{}}
	for _, line := range strings.SplitAfter(text, "\n") {
		if name, isType := declName(line); name != "" {
			parts := strings.Split(name, ".") // T.M: identifiers have no dot, so it separates
			for i, p := range parts {
				parts[i] = escapeID(p)
			}
			blocks = append(blocks, goBlock{Name: name, IsType: isType, Anchor: ids.unique(prefix + strings.Join(parts, "."))})
		}
		blocks[len(blocks)-1].Text += line
	}
	return blocks
}

// declName is the name a go doc line declares at its start ("Client", "New", "Client.Run"), or "".
func declName(line string) (name string, isType bool) {
	ident := func(s string) string {
		end := strings.IndexFunc(s, func(r rune) bool { return !(r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r)) })
		if end < 0 {
			end = len(s)
		}
		return s[:end]
	}
	if rest, ok := strings.CutPrefix(line, "type "); ok {
		return ident(rest), true
	}
	rest, ok := strings.CutPrefix(line, "func ")
	if !ok {
		return "", false
	}
	if recv, ok := strings.CutPrefix(rest, "("); ok {
		r, after, found := strings.Cut(recv, ")")
		fields := strings.Fields(r)
		if !found || len(fields) == 0 {
			return "", false
		}
		typ := ident(strings.TrimLeft(fields[len(fields)-1], "*"))
		method := ident(strings.TrimSpace(after))
		if typ == "" || method == "" {
			return "", false
		}
		return typ + "." + method, false
	}
	return ident(rest), false
}

// exampleTitle is how go doc names an example: ExampleClient_Run documents Client.Run.
func exampleTitle(name string) string {
	if name == "" {
		return "package"
	}
	base, suffix, _ := strings.Cut(name, "_")
	if suffix != "" && suffix[0] >= 'a' && suffix[0] <= 'z' {
		return base + " (" + suffix + ")" // ExampleFoo_second: a second example of Foo
	}
	if suffix != "" {
		return base + "." + suffix
	}
	return base
}

// exampleCode is the example's body as gofmt prints it, without the braces and one indent.
func exampleCode(fset *token.FileSet, ex *doc.Example) (string, error) {
	var buf bytes.Buffer
	if err := format.Node(&buf, fset, ex.Code); err != nil {
		return "", err
	}
	s := buf.String()
	if block, ok := ex.Code.(*ast.BlockStmt); ok && block != nil {
		s = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "{"), "}")
		var lines []string
		for _, l := range strings.Split(strings.Trim(s, "\n"), "\n") {
			lines = append(lines, strings.TrimPrefix(l, "\t"))
		}
		s = strings.Join(lines, "\n")
	}
	return s, nil
}

const goHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>{{.CSS}}</style>
</head>
<body>
<nav class="toc" aria-label="Contents">
<p class="toc-title">{{.Title}}</p>
<ul>
{{- range .Packages}}
<li><a href="#{{.Anchor}}">{{.ImportPath}}</a><ul>
{{- range .Blocks}}{{if .IsType}}
<li><a href="#{{.Anchor}}">type {{.Name}}</a></li>
{{- end}}{{end}}
{{- range .Examples}}
<li><a href="#{{.Anchor}}">Example: {{.Name}}</a></li>
{{- end}}
</ul></li>
{{- end}}
</ul>
</nav>
<main>
<h1>{{.Title}}</h1>
<p class="meta">The text of <code>go doc -all</code> for each package, then its examples (Example tests, run by <code>go test</code>).</p>
{{- range .Packages}}
<section id="{{.Anchor}}">
<h2><a class="permalink" href="#{{.Anchor}}">#</a> {{.ImportPath}}</h2>
<pre>{{range .Blocks}}{{if .Anchor}}<span id="{{.Anchor}}"></span>{{end}}{{.Text}}{{end}}</pre>
{{- if .Examples}}
<h3>Examples</h3>
{{- range .Examples}}
<article id="{{.Anchor}}" class="op">
<h4><a class="permalink" href="#{{.Anchor}}">#</a> {{.Name}}</h4>
{{- if .Doc}}<p>{{.Doc}}</p>{{end}}
<pre>{{.Code}}</pre>
{{- if .Output}}<p>{{if .Unordered}}Output (in any order):{{else}}Output:{{end}}</p><pre>{{.Output}}</pre>{{end}}
</article>
{{- end}}
{{- end}}
</section>
{{- end}}
</main>
</body>
</html>
`
