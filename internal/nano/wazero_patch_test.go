package nano

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"
	wapi "github.com/tetratelabs/wazero/api"
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

	// Every line the patches add must be in the copy: a fresh copy without them fails here. A line a
	// later patch takes out again (0004 changes 0001's cache magic) is not looked for.
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
			case strings.HasPrefix(line, "-") && !strings.HasPrefix(line, "--- "):
				if i := slices.Index(added[file], line[1:]); i >= 0 {
					added[file] = slices.Delete(added[file], i, i+1)
				}
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

// wasmSection encodes a module section: its id, size and body.
func wasmSection(id byte, body ...byte) []byte {
	return append([]byte{id, byte(len(body))}, body...)
}

// TestTableFilledPerInstanceFromElementSegment: the table that patch 0003 fills a segment at a time
// (wasm.ElementSegment.FuncIndexes, wazevo FunctionInstanceReferences) calls, in each instance, the
// instance's own functions: an imported one and two that read the instance's own global. A table
// entry resolved to the wrong function or to another instance's state fails here.
func TestTableFilledPerInstanceFromElementSegment(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigCompiler())
	defer rt.Close(ctx)
	if _, err := rt.NewHostModuleBuilder("env").NewFunctionBuilder().
		WithFunc(func() int32 { return 42 }).Export("host").Instantiate(ctx); err != nil {
		t.Fatal(err)
	}
	const i32, funcref = 0x7f, 0x70
	mod := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	mod = append(mod, wasmSection(1, 2, 0x60, 0, 1, i32, 0x60, 1, i32, 1, i32)...)         // types: ()->i32, (i32)->i32
	mod = append(mod, wasmSection(2, 1, 3, 'e', 'n', 'v', 4, 'h', 'o', 's', 't', 0, 0)...) // func 0: env.host
	mod = append(mod, wasmSection(3, 3, 0, 0, 1)...)                                       // funcs 1, 2, 3
	mod = append(mod, wasmSection(4, 1, funcref, 0, 4)...)                                 // table of 4
	mod = append(mod, wasmSection(6, 1, i32, 1, 0x41, 0, 0x0b)...)                         // global 0: mut i32 = 0
	mod = append(mod, wasmSection(7, 2, 4, 'c', 'a', 'l', 'l', 0, 3, 1, 'g', 3, 0)...)     // exports call, g
	mod = append(mod, wasmSection(9, 1, 0, 0x41, 0, 0x0b, 4, 0, 1, 2, 1)...)               // table[0:4] = 0, 1, 2, 1
	mod = append(mod, wasmSection(10, 3,
		4, 0, 0x23, 0, 0x0b, // func 1: global.get 0
		8, 0, 0x23, 0, 0x41, 0xe4, 0, 0x6a, 0x0b, // func 2: global.get 0 + 100
		7, 0, 0x20, 0, 0x11, 0, 0, 0x0b, // func 3: call_indirect (type 0) table[arg]
	)...)
	compiled, err := rt.CompileModule(ctx, mod)
	if err != nil {
		t.Fatal(err)
	}
	insts := map[int32]wapi.Module{}
	for _, g := range []int32{7, 9} {
		m, err := rt.InstantiateModule(ctx, compiled, wazero.NewModuleConfig().WithName(fmt.Sprint("m", g)))
		if err != nil {
			t.Fatal(err)
		}
		m.ExportedGlobal("g").(wapi.MutableGlobal).Set(uint64(g))
		insts[g] = m
	}
	for g, m := range insts {
		for _, c := range []struct {
			entry uint64
			want  int32
		}{{0, 42}, {1, g}, {2, g + 100}, {3, g}} {
			t.Run(fmt.Sprintf("instance=%d/entry=%d", g, c.entry), func(t *testing.T) {
				res, err := m.ExportedFunction("call").Call(ctx, c.entry)
				if err != nil {
					t.Fatal(err)
				}
				if got := int32(res[0]); got != c.want {
					t.Errorf("table entry %d of the instance whose global is %d returned %d, want %d", c.entry, g, got, c.want)
				}
			})
		}
	}
}
