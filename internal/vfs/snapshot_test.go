package vfs

import (
	"io/fs"
	"testing"
)

func treeOf(t *testing.T, f *FS) map[string]TreeEntry {
	t.Helper()
	out := map[string]TreeEntry{}
	var order []string
	if err := f.Tree(func(e TreeEntry, data []byte) error {
		if e.Mode.IsRegular() && e.LinkOf == "" && int64(len(data)) != e.Size {
			t.Errorf("%s: %d bytes of data, size %d", e.Path, len(data), e.Size)
		}
		out[e.Path] = e
		order = append(order, e.Path)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, p := range order {
		for _, q := range order[i+1:] {
			if len(q) < len(p) && p[:len(q)+1] == q+"/" {
				t.Errorf("%s reported after its child %s", q, p)
			}
		}
	}
	return out
}

// TestTree checks what a snapshot sees of the writable tree: names with their kinds, hard links
// once, host set-up and layers left out, open handles counted, and Versions that change with the
// content and only with it.
func TestTree(t *testing.T) {
	f := newTestFS(t, Limits{})
	mustWrite := func(p, s string) {
		t.Helper()
		if err := f.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite("/tmp/a.txt", "alpha")
	mustWrite("/data/sub/b.txt", "beta")
	if errno := f.Link("/tmp/a.txt", "/data/hard"); errno != 0 {
		t.Fatal(errno)
	}
	if errno := f.Symlink("/tmp/a.txt", "/tmp/ln"); errno != 0 {
		t.Fatal(errno)
	}
	mustWrite("/usr/note.txt", "beside the layer")
	h, errno := f.OpenFile("/data/sub/b.txt", rdonly, 0)
	if errno != 0 {
		t.Fatal(errno)
	}

	tree := treeOf(t, f)
	cases := []struct {
		path   string
		want   bool
		isDir  bool
		linkOf string
		target string
		opens  int
	}{
		{path: "/tmp", want: true, isDir: true},
		{path: "/tmp/a.txt", want: true, linkOf: "/data/hard"}, // "/data" sorts first: its name is the file's
		{path: "/tmp/ln", want: true, target: "/tmp/a.txt"},
		{path: "/data/sub", want: true, isDir: true},
		{path: "/data/sub/b.txt", want: true, opens: 1},
		{path: "/data/hard", want: true},
		{path: "/usr/note.txt", want: true},
		{path: "/usr", want: false},        // leads to the layer: set-up
		{path: "/usr/lib", want: false},    // same
		{path: "/usr/lib/py", want: false}, // the layer itself
		{path: "/usr/lib/py/os.py", want: false},
	}
	for _, tc := range cases {
		e, ok := tree[tc.path]
		if ok != tc.want {
			t.Errorf("%s reported %v; want %v", tc.path, ok, tc.want)
			continue
		}
		if !ok {
			continue
		}
		if e.Mode.IsDir() != tc.isDir || e.LinkOf != tc.linkOf || e.Target != tc.target || e.Opens != tc.opens {
			t.Errorf("%s = %+v", tc.path, e)
		}
	}
	if l := tree["/tmp/ln"]; l.Mode&fs.ModeSymlink == 0 {
		t.Errorf("/tmp/ln mode %v", l.Mode)
	}
	h.Close()
	if e := treeOf(t, f)["/data/sub/b.txt"]; e.Opens != 0 {
		t.Errorf("opens after close = %d", e.Opens)
	}

	// Versions: reading and chmod keep it, every write changes it.
	v0 := treeOf(t, f)["/data/sub/b.txt"].Version
	if _, err := f.ReadFile("/data/sub/b.txt", 0); err != nil {
		t.Fatal(err)
	}
	f.Chmod("/data/sub/b.txt", 0o600)
	if v := treeOf(t, f)["/data/sub/b.txt"].Version; v != v0 {
		t.Errorf("version changed without a write")
	}
	for _, content := range []string{"beta", "gamma", ""} {
		mustWrite("/data/sub/b.txt", content)
		v := treeOf(t, f)["/data/sub/b.txt"].Version
		if v == v0 {
			t.Errorf("version unchanged after writing %q", content)
		}
		v0 = v
	}
	if treeOf(t, f)["/data/hard"].Version == treeOf(t, f)["/data/sub/b.txt"].Version {
		t.Errorf("two files share a version")
	}
}
