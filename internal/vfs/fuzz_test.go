package vfs

import (
	"testing"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
)

// FuzzOps drives a filesystem with an arbitrary sequence of operations on arbitrary paths. Whatever
// happens, it must not panic, the quota counters must stay within their limits and never go negative,
// and nothing may appear outside the writable tree's known roots.
func FuzzOps(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3}, "tmp/a", "tmp/../b")
	f.Add([]byte{4, 5, 6, 7, 8}, "/../../etc", "data/x/../../y")
	f.Add([]byte{9, 10, 11, 0, 0, 3}, "tmp/l", "/tmp/l/l/l")
	f.Add([]byte{1, 1, 1, 1, 1, 1}, "tmp/\x00", "usr/lib/py/os.py")
	f.Fuzz(func(t *testing.T, ops []byte, p1, p2 string) {
		fs := newTestFS(t, Limits{MaxBytes: 1 << 12, MaxFiles: 16})
		paths := []string{p1, p2, "tmp/" + p1, p1 + "/" + p2}
		var open []experimentalsys.File
		for i, op := range ops {
			if i > 64 {
				break
			}
			a, b := paths[i%len(paths)], paths[(i+1)%len(paths)]
			switch op % 12 {
			case 0:
				if h, errno := fs.OpenFile(a, experimentalsys.O_RDWR|experimentalsys.O_CREAT, 0o644); errno == 0 {
					open = append(open, h)
				}
			case 1:
				for _, h := range open {
					h.Write([]byte(b))
				}
			case 2:
				fs.Mkdir(a, 0o755)
			case 3:
				fs.Symlink(b, a)
			case 4:
				fs.Rename(a, b)
			case 5:
				fs.Unlink(a)
			case 6:
				fs.Rmdir(a)
			case 7:
				fs.Stat(a)
				fs.Lstat(b)
			case 8:
				for _, h := range open {
					h.Truncate(int64(len(a)) * 100)
				}
			case 9:
				fs.Link(a, b)
			case 10:
				if len(open) > 0 {
					open[0].Close()
					open = open[1:]
				}
			case 11:
				fs.ReadDir("/" + a)
				fs.ReadFile("/"+b, 0)
			}
			used, files := fs.Usage()
			if used < 0 || used > 1<<12 || files < 0 || files > 16 {
				t.Fatalf("quota counters out of range: %d bytes, %d files", used, files)
			}
		}
		for _, h := range open {
			h.Close()
		}
		ents, err := fs.ReadDir("/")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			switch e.Name {
			case "tmp", "data", "usr":
			default:
				if e.Name == "" || e.Name == ".." || e.Name == "." {
					t.Fatalf("bad name at the root: %q", e.Name)
				}
			}
		}
	})
}
