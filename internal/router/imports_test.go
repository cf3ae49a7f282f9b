package router

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestImports(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want []string // "module@line"
	}{
		{"plain", "import os", []string{"os@1"}},
		{"dotted as", "import a.b as c", []string{"a.b@1"}},
		{"several", "import os, sys as s, json", []string{"os@1", "sys@1", "json@1"}},
		{"from", "from x.y import z", []string{"x.y@1"}},
		{"from star", "from collections import *", []string{"collections@1"}},
		{"relative", "from . import z\nfrom .. import y\nfrom .mod import q\nfrom ...pkg import w", nil},
		{"parenthesised", "from pandas import (\n    DataFrame,\n    Series,\n)\nimport numpy", []string{"pandas@1", "numpy@5"}},
		{"backslash", "import os, \\\n    sys", []string{"os@1", "sys@2"}},
		{"in function", "def f():\n    import numpy as np\n    return np", []string{"numpy@2"}},
		{"in try", "try:\n    import ujson as json\nexcept ImportError:\n    import json", []string{"ujson@2", "json@4"}},
		{"after colon", "if True: import scipy", []string{"scipy@1"}},
		{"after semicolon", "x = 1; import math; y = 2", []string{"math@1"}},
		{"dunder import", "m = __import__('pandas')", []string{"pandas@1"}},
		{"dunder import double quotes", "m = __import__(\"matplotlib.pyplot\")", []string{"matplotlib.pyplot@1"}},
		{"import_module", "import importlib\nm = importlib.import_module('sklearn.linear_model')", []string{"importlib@1", "sklearn.linear_model@2"}},
		{"import_module not literal", "import importlib\nname = 'x'\nimportlib.import_module(name)", []string{"importlib@1"}},
		{"comment", "# import numpy\nimport os  # import pandas", []string{"os@2"}},
		{"string", "s = 'import numpy'\nt = \"from pandas import x\"", nil},
		{"docstring", "\"\"\"\nimport numpy\nfrom pandas import DataFrame\n\"\"\"\nimport os", []string{"os@5"}},
		{"single quoted docstring", "'''import scipy'''\nimport re", []string{"re@2"}},
		{"raw and bytes", "r = r'import numpy'\nb = b'import pandas'\nimport zlib", []string{"zlib@3"}},
		{"f-string", "x = f'{__import__(\"os\")}'\nimport sys", []string{"sys@2"}},
		{"escaped quote", "s = 'it\\'s import numpy'\nimport json", []string{"json@2"}},
		{"triple with escaped quotes", "s = \"\"\"a \\\"\"\" import numpy \"\"\"\nimport json", []string{"json@2"}},
		{"attribute not import", "x.import_thing = 1\nobj.from_file()", nil},
		{"keyword arg named import", "f(import_=1)", nil},
		{"class body", "class A:\n    import decimal\n", []string{"decimal@2"}},
		{"with block", "with open('f') as fh: import csv", []string{"csv@1"}},
		{"nested parens call", "print((1, 2))\nimport heapq", []string{"heapq@2"}},
		{"dict spanning lines", "d = {\n 'import': 1,\n}\nimport bisect", []string{"bisect@4"}},
		{"unterminated string", "s = 'oops\nimport os", []string{"os@2"}},
		{"unterminated triple", "s = '''never closed\nimport os", nil},
		{"empty", "", nil},
		{"only comment", "# nothing", nil},
		{"unicode identifiers", "données = 1\nimport statistics", []string{"statistics@2"}},
		{"import in lambda is not", "f = lambda: __import__('torch')", []string{"torch@1"}},
		{"from import as", "from os import path as p", []string{"os@1"}},
		{"multiple statements lines", "import a\nimport b\nfrom c import d", []string{"a@1", "b@2", "c@3"}},
		{"invalid dunder name", "__import__('not a module')", nil},
		{"dunder concatenation", "m = __import__('nu' + 'mpy')", nil},
		{"dunder with fromlist", "m = __import__('xml.dom', fromlist=['x'])", []string{"xml.dom@1"}},
		{"tab indented", "if x:\n\timport struct", []string{"struct@2"}},
		{"windows newlines", "import os\r\nimport sys\r\n", []string{"os@1", "sys@2"}},
		{"bad syntax survives", "import\nfrom import\nimport ,\nimport os", []string{"os@4"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, im := range Imports(tc.src) {
				got = append(got, im.Module+"@"+strconv.Itoa(im.Line))
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func FuzzImports(f *testing.F) {
	f.Add("import os\nfrom x import (a,\n b)\n__import__('y')")
	f.Add("'''\nimport q\n'''\n# c\nimport r")
	f.Add("from . import x\nimport a.b as c, d")
	f.Add("s = 'unterminated\\\n")
	f.Fuzz(func(t *testing.T, src string) {
		for _, im := range Imports(src) {
			if !validDotted(im.Module) || im.Line < 1 || im.Line > strings.Count(src, "\n")+1 {
				t.Fatalf("bad import %+v from %q", im, src)
			}
		}
	})
}

func BenchmarkImports1000Lines(b *testing.B) {
	var sb strings.Builder
	for i := 0; i < 100; i++ {
		sb.WriteString("import os, sys\nfrom collections import (\n    OrderedDict,\n    defaultdict,\n)\n")
		sb.WriteString("def f(x):\n    '''docstring with import numpy'''\n    s = \"from pandas import x\"  # import scipy\n    return __import__('json')\n\n")
	}
	src := sb.String()
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		Imports(src)
	}
}
