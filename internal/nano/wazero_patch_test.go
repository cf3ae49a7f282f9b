package nano

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const wazeroModule = "github.com/tetratelabs/wazero"

// TestVendoredWazeroMatchesGoMod: the patched copy under third_party/wazero is of the wazero version
// go.mod requires, go.mod replaces the module with it, and every line
// the patch adds is in the copy. Upgrading wazero in go.mod without re-vendoring and re-applying the
// patch (third_party/README.md) fails here.
func TestVendoredWazeroMatchesGoMod(t *testing.T) {
	root := filepath.Join("..", "..")
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var required, replacedBy string
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		switch {
		case len(f) >= 2 && f[0] == wazeroModule:
			required = f[1]
		case len(f) >= 4 && f[0] == "replace" && f[1] == wazeroModule && f[2] == "=>":
			replacedBy = f[3]
		}
	}
	upstream, err := os.ReadFile(filepath.Join(root, "third_party", "wazero", "UPSTREAM"))
	if err != nil {
		t.Fatal(err)
	}
	vendored := strings.Fields(string(upstream))
	if len(vendored) != 2 || vendored[0] != wazeroModule {
		t.Fatalf("third_party/wazero/UPSTREAM should name %s and its version, has %q", wazeroModule, upstream)
	}
	if required != vendored[1] {
		t.Errorf("go.mod requires %s %s but third_party/wazero is a copy of %s: re-vendor it and re-apply the patch (third_party/README.md)", wazeroModule, required, vendored[1])
	}
	if replacedBy != "./third_party/wazero" {
		t.Errorf("go.mod should replace %s with ./third_party/wazero, replaces it with %q", wazeroModule, replacedBy)
	}

	// Every line the patches add must be in the copy: a fresh copy without them fails here.
	patches, err := filepath.Glob(filepath.Join(root, "third_party", "patches", "*-wazero-*.patch"))
	if err != nil || len(patches) == 0 {
		t.Fatalf("no wazero patches in third_party/patches (%v)", err)
	}
	added := map[string][]string{}
	for _, name := range patches {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		var file string
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "+++ "):
				file = strings.TrimPrefix(strings.TrimPrefix(line, "+++ "), "b/")
			case strings.HasPrefix(line, "+") && strings.TrimSpace(line[1:]) != "":
				added[file] = append(added[file], line[1:])
			}
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	if len(added) == 0 {
		t.Fatal("the patches add no lines")
	}
	for name, lines := range added {
		src, err := os.ReadFile(filepath.Join(root, "third_party", "wazero", name))
		if err != nil {
			t.Errorf("patched file missing from the copy: %v", err)
			continue
		}
		for _, l := range lines {
			if !strings.Contains(string(src), l) {
				t.Errorf("third_party/wazero/%s lacks the patch's line %q: re-apply the patch", name, l)
				break
			}
		}
	}
}
