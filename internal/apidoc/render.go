package apidoc

import (
	_ "embed"
	"html/template"
	"strings"
)

var (
	//go:embed page.html.tmpl
	pageHTML string
	//go:embed style.css
	styleCSS string
)

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"lower": strings.ToLower,
	"join":  strings.Join,
}).Parse(pageHTML))
