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

// FuzzOffsets drives a handle with arbitrary offsets and sizes (pwrite, seek then write, truncate,
// pread). Offset arithmetic must never panic or wrap (issue 9 #15: a pwrite at 2**63-1 did), the quota
// counter must stay within its limit, and the file must stay no larger than the quota allows.
func FuzzOffsets(f *testing.F) {
	f.Add(int64(1<<63-1), uint16(1), uint8(0))
	f.Add(int64(1<<63-2), uint16(3), uint8(0))
	f.Add(int64(1<<40), uint16(1), uint8(1))
	f.Add(int64(-1<<63), uint16(1), uint8(1))
	f.Add(int64(1<<63-1), uint16(0), uint8(2))
	f.Add(int64(1<<63-1), uint16(8), uint8(3))
	f.Fuzz(func(t *testing.T, off int64, n uint16, op uint8) {
		const quota = 1 << 12
		fs := newTestFS(t, Limits{MaxBytes: quota, MaxFiles: 16})
		h, errno := fs.OpenFile("/tmp/f", experimentalsys.O_RDWR|experimentalsys.O_CREAT, 0o644)
		if errno != 0 {
			t.Fatal(errno)
		}
		defer h.Close()
		h.Write([]byte("0123456789"))
		buf := make([]byte, int(n)%(2*quota))
		for _, whence := range []int{0, 1, 2} {
			switch op % 4 {
			case 0:
				h.Pwrite(buf, off)
			case 1:
				if _, errno := h.Seek(off, whence); errno == 0 {
					h.Write(buf)
				}
			case 2:
				h.Truncate(off)
			case 3:
				h.Pread(buf, off)
				h.Seek(off, whence)
				h.Read(buf)
			}
			fs.TakeErrno()
			if used, _ := fs.Usage(); used < 0 || used > quota {
				t.Fatalf("quota counter out of range: %d bytes", used)
			}
			if st, errno := h.Stat(); errno != 0 || st.Size < 0 || st.Size > quota {
				t.Fatalf("file size %d (%v)", st.Size, errno)
			}
		}
	})
}
