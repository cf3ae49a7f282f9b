package apidoc

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestGoPageListsTheDocAndEveryExample(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a_test.go"), `package demo_test

import "fmt"

// Greeting says <hello>.
func ExampleGreet() {
	fmt.Println("hi")
	// Output: hi
}

func ExampleClient_Run() {
	for _, s := range []string{"b", "a"} {
		fmt.Println(s)
	}
	// Unordered output:
	// a
	// b
}

func ExampleGreet_second() {
	fmt.Println("again")
}

func TestNotAnExample(t *testing.T) {}
`)
	text := "package demo // import \"example.com/demo\"\n\nPackage demo greets <people>.\n\nfunc Greet()\n" +
		"type Client struct{}\n    A client.\n\nfunc New() *Client\nfunc (c *Client) Run(x int) error\nfunc (Client) Close()\n" +
		"type List[T any] []T\n"
	var buf bytes.Buffer
	if err := RenderGo(&buf, "1.2.3", []GoPackage{{Dir: dir, DocText: text}}); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	for _, tc := range []struct{ name, want string }{
		{"title with the version", "<title>agentbox Go SDK 1.2.3</title>"},
		{"import path", "example.com/demo"},
		{"go doc text, escaped", "Package demo greets &lt;people&gt;."},
		{"example of a function", `id="example-demo-Greet"`},
		{"example of a method, named as go doc does", "Client.Run"},
		{"a second example", "Greet (second)"},
		{"example doc, escaped", "Greeting says &lt;hello&gt;."},
		{"example code without its braces", "for _, s := range []string{&#34;b&#34;, &#34;a&#34;} {\n\tfmt.Println(s)\n}"},
		{"expected output", "<pre>hi\n</pre>"},
		{"unordered output said", "Output (in any order):"},
		{"a type has an anchor, listed in the contents", `<span id="go-demo-Client"></span>type Client struct{}`},
		{"a function has an anchor", `<span id="go-demo-New"></span>func New()`},
		{"a method has an anchor", `<span id="go-demo-Client.Run"></span>func (c *Client) Run`},
		{"a method without receiver name", `<span id="go-demo-Client.Close"></span>`},
		{"a generic type", `<span id="go-demo-List"></span>type List[T any]`},
		{"types in the contents", `<a href="#go-demo-Client">type Client</a>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(page, tc.want) {
				t.Errorf("page lacks %q", tc.want)
			}
		})
	}
	t.Run("tests are not examples", func(t *testing.T) {
		if strings.Contains(page, "NotAnExample") {
			t.Error("a Test function is listed")
		}
	})
	t.Run("links resolve", func(t *testing.T) {
		p := parse(t, page)
		if len(p.links) < 4 {
			t.Fatalf("only %d links", len(p.links))
		}
		for _, l := range p.links {
			if p.ids[l] != 1 {
				t.Errorf("#%s has %d targets", l, p.ids[l])
			}
		}
	})
}

func TestGoPageRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := t.TempDir()
	writeFile(t, filepath.Join(bad, "x_test.go"), "package x\nfunc Example( {\n")
	for _, tc := range []struct {
		name string
		pkg  GoPackage
		want string
	}{
		{"not go doc output", GoPackage{Dir: dir, DocText: "hello\n"}, "does not start with a package clause"},
		{"a test file that does not parse", GoPackage{Dir: bad, DocText: "package x\n"}, "x_test.go"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := RenderGo(&buf, "", []GoPackage{tc.pkg})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes despite the error", buf.Len())
			}
		})
	}
}

// The SDK's own examples make it onto the page.
func TestGoPageOfTheSDK(t *testing.T) {
	var buf bytes.Buffer
	text := "package agentbox // import \"github.com/entersandbox/agentbox\"\n"
	if err := RenderGo(&buf, "", []GoPackage{{Dir: filepath.Join("..", ".."), DocText: text}}); err != nil {
		t.Fatal(err)
	}
	for _, ex := range []string{"example-agentbox-Client_Run", "example-agentbox-Session"} {
		if !strings.Contains(buf.String(), `id="`+ex+`"`) {
			t.Errorf("no %s", ex)
		}
	}
}
