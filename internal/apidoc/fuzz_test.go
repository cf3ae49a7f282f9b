package apidoc

import (
	"strings"
	"testing"

	"github.com/pb33f/go-yaml"
)

// fuzzDoc has mappings, sequences, escaped keys and an alias for the resolver to walk.
const fuzzDoc = `openapi: 3.1.0
paths:
  /a/{b}:
    get:
      parameters: [{name: b, in: path}, &p {name: c, in: query}]
components:
  schemas:
    "x~y": {type: string}
    "s/t": {type: integer}
    A: {type: object, properties: {n: {$ref: "#/components/schemas/A"}}}
    B: *p
`

// FuzzResolveRef: any reference either resolves to a node or fails with an error naming it; never a
// panic. A reference to a component schema resolves exactly when the component exists, and its
// anchor is a valid id.
func FuzzResolveRef(f *testing.F) {
	for _, s := range []string{"#/components/schemas/A", "#/components/schemas/x~0y", "#/components/schemas/s~1t",
		"#/paths/~1a~1{b}/get/parameters/1", "#/components/schemas/B/name", "#", "#/", "other.yaml#/A", "#//", "#/paths/x/-1"} {
		f.Add(s)
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(fuzzDoc), &root); err != nil {
		f.Fatal(err)
	}
	components := map[string]bool{"x~y": true, "s/t": true, "A": true, "B": true}
	f.Fuzz(func(t *testing.T, ref string) {
		n, err := resolveRef(&root, ref)
		if err != nil {
			if n != nil {
				t.Fatalf("%q: error %v with a node", ref, err)
			}
			if !strings.Contains(err.Error(), "$ref") {
				t.Fatalf("%q: error %q does not name the reference", ref, err)
			}
		} else if n == nil {
			t.Fatalf("%q: no node and no error", ref)
		}
		if name := schemaName(ref); name != "" {
			if components[name] != (err == nil) {
				t.Fatalf("%q names component %q (exists %v) but resolving gave %v", ref, name, components[name], err)
			}
			if !validID(schemaAnchor(name)) {
				t.Fatalf("anchor %q of %q is not a valid id", schemaAnchor(name), name)
			}
		}
	})
}

// FuzzEscapeID: ids are valid in HTML and in a URL fragment as they are, and two names never share one.
func FuzzEscapeID(f *testing.F) {
	f.Add("Session", "Session.")
	f.Add("a b", "a.20b")
	f.Add("Time travel", "Time_travel")
	f.Add("ü", ".C3.BC")
	f.Fuzz(func(t *testing.T, a, b string) {
		ea, eb := escapeID(a), escapeID(b)
		if !validID("x" + ea) {
			t.Fatalf("escapeID(%q) = %q is not a valid id", a, ea)
		}
		if a != b && ea == eb {
			t.Fatalf("escapeID(%q) == escapeID(%q) == %q", a, b, ea)
		}
		if s := slug(a); !validID("x" + s) {
			t.Fatalf("slug(%q) = %q is not a valid id", a, s)
		}
	})
}

// validID: non-empty, and only characters a fragment carries without percent-encoding.
func validID(id string) bool {
	if id == "" {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func TestAnchorsAreUnique(t *testing.T) {
	a := anchors{}
	for _, tc := range []struct{ base, want string }{
		{"op-get-a-b", "op-get-a-b"}, {"op-get-a-b", "op-get-a-b-2"}, {"op-get-a-b", "op-get-a-b-3"}, {"op-get-a-b-2", "op-get-a-b-2-2"},
	} {
		if got := a.unique(tc.base); got != tc.want {
			t.Errorf("unique(%q) = %q, want %q", tc.base, got, tc.want)
		}
	}
}
