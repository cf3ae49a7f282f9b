package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"regexp/syntax"
	"sort"
	"strconv"
	"strings"
)

// gitleaksExamples reads each rule function in DIR/cmd/generate/config/rules
// and evaluates the string expressions assigned to its tps and fps
// variables. Samples gitleaks generates from a regex (secrets.NewSecret) are
// generated here from the same regex; its sample wrappers
// (utils.GenerateSampleSecret[s]) are replaced by our own config-file
// contexts. Expressions this small evaluator does not understand are
// counted and left out.
func gitleaksExamples(g *gen, dir string) ([]Record, int, error) {
	files, err := filepath.Glob(filepath.Join(dir, "cmd/generate/config/rules/*.go"))
	if err != nil || len(files) == 0 {
		return nil, 0, fmt.Errorf("no gitleaks rule sources under %s (%v)", dir, err)
	}
	sort.Strings(files)
	// Rule sources also hold rules the shipped rules file leaves out
	// (trello, square-secret, ...): only examples of shipped rules count.
	cfg, err := os.ReadFile(filepath.Join(dir, "config/gitleaks.toml"))
	if err != nil {
		return nil, 0, err
	}
	shipped := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^id = "([^"]+)"`).FindAllStringSubmatch(string(cfg), -1) {
		shipped[m[1]] = true
	}
	var recs []Record
	skipped := 0
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			return nil, 0, fmt.Errorf("parse %s: %w", f, err)
		}
		for _, d := range file.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			ev := &evaluator{g: g, env: map[string][]string{}}
			id := ruleID(fn)
			if id == "" || !shipped[id] {
				continue
			}
			ev.block(fn.Body.List)
			skipped += ev.skipped
			for _, s := range ev.env["tps"] {
				recs = append(recs, Record{Source: "gitleaks-tp", Kind: id, Rule: id, Text: s})
			}
			for _, s := range ev.env["fps"] {
				recs = append(recs, Record{Source: "gitleaks-fp", Kind: id, Rule: id, Text: s})
			}
		}
	}
	return recs, skipped, nil
}

// ruleID finds RuleID: "..." in the function's config.Rule literal.
func ruleID(fn *ast.FuncDecl) string {
	id := ""
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		kv, ok := n.(*ast.KeyValueExpr)
		if !ok || id != "" {
			return id == ""
		}
		if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "RuleID" {
			if lit, ok := kv.Value.(*ast.BasicLit); ok {
				id, _ = strconv.Unquote(lit.Value)
			}
		}
		return true
	})
	return id
}

type evaluator struct {
	g       *gen
	env     map[string][]string // string and []string variables of the function
	skipped int
}

func (ev *evaluator) block(stmts []ast.Stmt) {
	for _, st := range stmts {
		switch s := st.(type) {
		case *ast.AssignStmt:
			if len(s.Lhs) != len(s.Rhs) {
				continue
			}
			for i, l := range s.Lhs {
				name, ok := l.(*ast.Ident)
				if !ok {
					continue
				}
				v, ok := ev.eval(s.Rhs[i])
				if !ok {
					ev.skipped++
					continue
				}
				if s.Tok == token.ADD_ASSIGN && len(ev.env[name.Name]) == 1 && len(v) == 1 {
					v = []string{ev.env[name.Name][0] + v[0]}
				}
				ev.env[name.Name] = v
			}
		case *ast.DeclStmt:
			gd, ok := s.Decl.(*ast.GenDecl)
			if !ok {
				continue
			}
			for _, sp := range gd.Specs {
				vs, ok := sp.(*ast.ValueSpec)
				if !ok || len(vs.Names) != len(vs.Values) {
					continue
				}
				for i, n := range vs.Names {
					if v, ok := ev.eval(vs.Values[i]); ok {
						ev.env[n.Name] = v
					} else {
						ev.skipped++
					}
				}
			}
		}
	}
}

// eval returns the strings an expression stands for (one for a string,
// several for a []string).
func (ev *evaluator) eval(e ast.Expr) ([]string, bool) {
	switch x := e.(type) {
	case *ast.BasicLit:
		if x.Kind != token.STRING {
			return []string{x.Value}, true // a number used as an argument
		}
		s, err := strconv.Unquote(x.Value)
		return []string{s}, err == nil
	case *ast.ParenExpr:
		return ev.eval(x.X)
	case *ast.Ident:
		if x.Name == "nil" {
			return nil, true
		}
		v, ok := ev.env[x.Name]
		return v, ok
	case *ast.BinaryExpr:
		if x.Op != token.ADD {
			return nil, false
		}
		a, ok1 := ev.eval(x.X)
		b, ok2 := ev.eval(x.Y)
		if !ok1 || !ok2 || len(a) != 1 || len(b) != 1 {
			return nil, false
		}
		return []string{a[0] + b[0]}, true
	case *ast.CompositeLit:
		var out []string
		for _, el := range x.Elts {
			if kv, ok := el.(*ast.KeyValueExpr); ok { // map[path]text: the text
				el = kv.Value
			}
			v, ok := ev.eval(el)
			if !ok {
				ev.skipped++
				continue
			}
			out = append(out, v...)
		}
		return out, true
	case *ast.CallExpr:
		return ev.call(x)
	}
	return nil, false
}

func (ev *evaluator) args(c *ast.CallExpr) ([]string, bool) {
	var out []string
	for _, a := range c.Args {
		v, ok := ev.eval(a)
		if !ok || len(v) != 1 {
			return nil, false
		}
		out = append(out, v[0])
	}
	return out, true
}

func (ev *evaluator) call(c *ast.CallExpr) ([]string, bool) {
	name := ""
	switch f := c.Fun.(type) {
	case *ast.Ident:
		name = f.Name
	case *ast.SelectorExpr:
		if p, ok := f.X.(*ast.Ident); ok {
			name = p.Name + "." + f.Sel.Name
		}
	}
	if name == "append" {
		var out []string
		for i, a := range c.Args {
			v, ok := ev.eval(a)
			if !ok {
				if i == 0 {
					return nil, false
				}
				ev.skipped++
				continue
			}
			out = append(out, v...)
		}
		return out, true
	}
	a, ok := ev.args(c)
	if !ok {
		return nil, false
	}
	class := func(cls string) ([]string, bool) {
		if len(a) != 1 {
			return nil, false
		}
		return []string{cls + "{" + a[0] + "}"}, true
	}
	switch name {
	case "secrets.NewSecret":
		if len(a) != 1 {
			return nil, false
		}
		s, err := sampleRegex(ev.g, a[0])
		if err != nil {
			return nil, false
		}
		return []string{s}, true
	case "utils.Numeric":
		return class(`[0-9]`)
	case "utils.Hex":
		return class(`[a-f0-9]`)
	case "utils.AlphaNumeric":
		return class(`[a-z0-9]`)
	case "utils.AlphaNumericExtendedShort":
		return class(`[a-z0-9_-]`)
	case "utils.AlphaNumericExtended":
		return class(`[a-z0-9=_\-]`)
	case "utils.AlphaNumericExtendedLong":
		return class(`[a-z0-9/=_+\-]`)
	case "utils.Hex8_4_4_4_12":
		return []string{`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`}, true
	case "utils.GenerateSampleSecret":
		if len(a) != 2 {
			return nil, false
		}
		return []string{a[0] + `_token = "` + a[1] + `"`}, true
	case "utils.GenerateSampleSecrets":
		if len(a) != 2 {
			return nil, false
		}
		return sampleContexts(a[0], a[1]), true
	case "fmt.Sprintf":
		if len(a) == 0 {
			return nil, false
		}
		args := make([]any, len(a)-1)
		for i, s := range a[1:] {
			args[i] = s
		}
		return []string{fmt.Sprintf(a[0], args...)}, true
	case "strings.Repeat":
		if n, err := strconv.Atoi(a[1]); err == nil && len(a) == 2 && n < 1000 {
			return []string{strings.Repeat(a[0], n)}, true
		}
	case "strings.ToUpper":
		return []string{strings.ToUpper(a[0])}, len(a) == 1
	case "strings.ToLower":
		return []string{strings.ToLower(a[0])}, len(a) == 1
	}
	return nil, false
}

// sampleContexts puts a secret in the config and code shapes secrets are
// usually written in.
func sampleContexts(id, s string) []string {
	up := strings.ToUpper(id)
	return []string{
		id + `Token = "` + s + `"`,
		id + "Token=" + s,
		"{\n  \"" + id + `_token": "` + s + "\"\n}",
		id + "_token: " + s,
		id + "_token: '" + s + "'",
		up + "_TOKEN=" + s,
		id + `Token := "` + s + `"`,
		"export " + up + `_TOKEN="` + s + `"`,
	}
}

// sampleRegex produces one string matching re (random choices from g).
func sampleRegex(g *gen, re string) (string, error) {
	r, err := syntax.Parse(re, syntax.Perl)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	walk(g, r.Simplify(), &b)
	return b.String(), nil
}

func walk(g *gen, r *syntax.Regexp, b *strings.Builder) {
	switch r.Op {
	case syntax.OpLiteral:
		for _, c := range r.Rune {
			if r.Flags&syntax.FoldCase != 0 && g.r.IntN(2) == 0 {
				c = []rune(strings.ToUpper(string(c)))[0]
			}
			b.WriteRune(c)
		}
	case syntax.OpCharClass:
		b.WriteRune(pickRune(g, r.Rune))
	case syntax.OpAnyCharNotNL, syntax.OpAnyChar:
		b.WriteByte("abcdefghijklmnopqrstuvwxyz0123456789"[g.r.IntN(36)])
	case syntax.OpCapture:
		walk(g, r.Sub[0], b)
	case syntax.OpConcat:
		for _, s := range r.Sub {
			walk(g, s, b)
		}
	case syntax.OpAlternate:
		walk(g, r.Sub[g.r.IntN(len(r.Sub))], b)
	case syntax.OpStar, syntax.OpPlus, syntax.OpQuest, syntax.OpRepeat:
		lo, hi := 0, 1
		switch r.Op {
		case syntax.OpStar:
			lo, hi = 0, 4
		case syntax.OpPlus:
			lo, hi = 1, 5
		case syntax.OpRepeat:
			lo, hi = r.Min, r.Max
			if hi < 0 {
				hi = lo + 4
			}
		}
		n := lo + g.r.IntN(hi-lo+1)
		for range n {
			walk(g, r.Sub[0], b)
		}
	}
	// Anchors, word boundaries and empty matches produce nothing.
}

// pickRune picks from a class's ranges, preferring printable ASCII so the
// samples look like the secrets they model.
func pickRune(g *gen, ranges []rune) rune {
	var ascii []rune
	for i := 0; i+1 < len(ranges); i += 2 {
		lo, hi := max(ranges[i], 0x21), min(ranges[i+1], 0x7e)
		for c := lo; c <= hi; c++ {
			ascii = append(ascii, c)
		}
	}
	if len(ascii) > 0 {
		return ascii[g.r.IntN(len(ascii))]
	}
	if len(ranges) >= 2 {
		return ranges[0]
	}
	return 'x'
}
