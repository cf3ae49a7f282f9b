package vfs

import (
	"archive/zip"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"unsafe"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
)

const (
	rdonly = experimentalsys.O_RDONLY
	wronly = experimentalsys.O_WRONLY
	rdwr   = experimentalsys.O_RDWR
	creat  = experimentalsys.O_CREAT
	trunc  = experimentalsys.O_TRUNC
	excl   = experimentalsys.O_EXCL
	appnd  = experimentalsys.O_APPEND
)

func newTestFS(t *testing.T, limits Limits) *FS {
	t.Helper()
	return newTestFSWith(t, limits, newTestLayer(t))
}

// newTestLayer is a small stand-in for the standard library: os.py and json/__init__.py.
func newTestLayer(t testing.TB) *Layer {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("lib/python3.11/os.py")
	w.Write([]byte("# os\n"))
	w, _ = zw.Create("lib/python3.11/json/__init__.py")
	w.Write([]byte("# json\n"))
	zw.Close()
	zr, err := zip.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	layer, err := NewLayerFromZip(zr, "lib/python3.11")
	if err != nil {
		t.Fatal(err)
	}
	return layer
}

// newTestFSWith mounts layer at /usr/lib/py in a new filesystem that also has /tmp and /data.
func newTestFSWith(t testing.TB, limits Limits, layer *Layer) *FS {
	t.Helper()
	f := New(limits)
	if err := f.Mount("/usr/lib/py", layer); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/tmp", "/data"} {
		if err := f.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func writeFile(t *testing.T, f *FS, p, content string) {
	t.Helper()
	h, errno := f.OpenFile(p, wronly|creat|trunc, 0o644)
	if errno != 0 {
		t.Fatalf("open %s: %v", p, errno)
	}
	if _, errno := h.Write([]byte(content)); errno != 0 {
		t.Fatalf("write %s: %v", p, errno)
	}
	h.Close()
}

func readFile(t *testing.T, f *FS, p string) string {
	t.Helper()
	h, errno := f.OpenFile(p, rdonly, 0)
	if errno != 0 {
		t.Fatalf("open %s: %v", p, errno)
	}
	defer h.Close()
	var out []byte
	buf := make([]byte, 3)
	for {
		n, errno := h.Read(buf)
		if errno != 0 {
			t.Fatalf("read %s: %v", p, errno)
		}
		if n == 0 {
			return string(out)
		}
		out = append(out, buf[:n]...)
	}
}

func TestFileOperations(t *testing.T) {
	f := newTestFS(t, Limits{})
	writeFile(t, f, "tmp/a.txt", "hello")
	if got := readFile(t, f, "/tmp/a.txt"); got != "hello" {
		t.Fatalf("read back %q", got)
	}
	h, _ := f.OpenFile("tmp/a.txt", wronly|appnd, 0)
	h.Write([]byte(" world"))
	h.Close()
	if got := readFile(t, f, "tmp/a.txt"); got != "hello world" {
		t.Fatalf("after append %q", got)
	}
	h, _ = f.OpenFile("tmp/a.txt", rdwr, 0)
	if off, errno := h.Seek(-5, io.SeekEnd); errno != 0 || off != 6 {
		t.Fatalf("seek: %d %v", off, errno)
	}
	h.Write([]byte("WORLD"))
	if errno := h.Truncate(8); errno != 0 {
		t.Fatal(errno)
	}
	buf := make([]byte, 20)
	n, _ := h.Pread(buf, 0)
	if string(buf[:n]) != "hello WO" {
		t.Fatalf("pread after truncate %q", buf[:n])
	}
	h.Close()
	st, errno := f.Stat("tmp/a.txt")
	if errno != 0 || st.Size != 8 || !st.Mode.IsRegular() {
		t.Fatalf("stat %+v %v", st, errno)
	}

	if errno := f.Mkdir("tmp/d", 0o755); errno != 0 {
		t.Fatal(errno)
	}
	if errno := f.Mkdir("tmp/d", 0o755); errno != experimentalsys.EEXIST {
		t.Fatalf("mkdir twice: %v", errno)
	}
	if errno := f.Rename("tmp/a.txt", "tmp/d/b.txt"); errno != 0 {
		t.Fatal(errno)
	}
	if _, errno := f.Stat("tmp/a.txt"); errno != experimentalsys.ENOENT {
		t.Fatalf("old name after rename: %v", errno)
	}
	if errno := f.Rmdir("tmp/d"); errno != experimentalsys.ENOTEMPTY {
		t.Fatalf("rmdir non-empty: %v", errno)
	}
	if errno := f.Rename("tmp", "tmp/d/x"); errno != experimentalsys.EINVAL {
		t.Fatalf("move a directory into itself: %v", errno)
	}
	d, _ := f.OpenFile("tmp/d", rdonly|experimentalsys.O_DIRECTORY, 0)
	ents, _ := d.Readdir(-1)
	if len(ents) != 1 || ents[0].Name != "b.txt" {
		t.Fatalf("readdir %+v", ents)
	}
	d.Seek(0, io.SeekStart)
	if again, _ := d.Readdir(1); len(again) != 1 {
		t.Fatalf("readdir after rewind %+v", again)
	}
	d.Close()
	if errno := f.Unlink("tmp/d/b.txt"); errno != 0 {
		t.Fatal(errno)
	}
	if errno := f.Rmdir("tmp/d"); errno != 0 {
		t.Fatal(errno)
	}
	if bytes, files := f.Usage(); bytes != 0 || files != 2 {
		t.Fatalf("usage after cleanup: %d bytes, %d files (want 0, 2: /tmp and /data)", bytes, files)
	}
}

func TestOpenFlags(t *testing.T) {
	f := newTestFS(t, Limits{})
	cases := []struct {
		name  string
		path  string
		flag  experimentalsys.Oflag
		errno experimentalsys.Errno
	}{
		{"missing without create", "tmp/none", rdonly, experimentalsys.ENOENT},
		{"exclusive create", "tmp/new", wronly | creat | excl, 0},
		{"exclusive on existing", "tmp/new", wronly | creat | excl, experimentalsys.EEXIST},
		{"write a directory", "tmp", wronly, experimentalsys.EISDIR},
		{"directory flag on file", "tmp/new", rdonly | experimentalsys.O_DIRECTORY, experimentalsys.ENOTDIR},
		{"file as directory", "tmp/new/x", rdonly, experimentalsys.ENOTDIR},
		{"create in missing dir", "nodir/x", wronly | creat, experimentalsys.ENOENT},
		{"write the read-only layer", "usr/lib/py/os.py", wronly, experimentalsys.EROFS},
		{"create in the read-only layer", "usr/lib/py/new.py", wronly | creat, experimentalsys.EROFS},
		{"read the read-only layer", "usr/lib/py/json/__init__.py", rdonly, 0},
		{"NUL in name", "tmp/a\x00b", wronly | creat, experimentalsys.EINVAL},
		{"name too long", "tmp/" + strings.Repeat("n", 300), wronly | creat, experimentalsys.ENAMETOOLONG},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, errno := f.OpenFile(tc.path, tc.flag, 0o644)
			if errno != tc.errno {
				t.Fatalf("errno %v, want %v", errno, tc.errno)
			}
			if h != nil {
				h.Close()
			}
		})
	}
}

func TestReadOnlyLayer(t *testing.T) {
	f := newTestFS(t, Limits{})
	if got := readFile(t, f, "/usr/lib/py/os.py"); got != "# os\n" {
		t.Fatalf("layer content %q", got)
	}
	for name, errno := range map[string]experimentalsys.Errno{
		"unlink": f.Unlink("usr/lib/py/os.py"),
		"rmdir":  f.Rmdir("usr/lib/py/json"),
		"rename": f.Rename("usr/lib/py/os.py", "tmp/os.py"),
		"chmod":  f.Chmod("usr/lib/py/os.py", 0o777),
		"mkdir":  f.Mkdir("usr/lib/py/x", 0o755),
	} {
		if errno != experimentalsys.EROFS {
			t.Errorf("%s in the layer: %v, want EROFS", name, errno)
		}
	}
	// Two filesystems share the layer but not their writable trees.
	g := newTestFS(t, Limits{})
	writeFile(t, f, "tmp/only-in-f", "x")
	if _, errno := g.Stat("tmp/only-in-f"); errno != experimentalsys.ENOENT {
		t.Fatalf("file leaked between filesystems: %v", errno)
	}
}

func TestPathsStayInside(t *testing.T) {
	f := newTestFS(t, Limits{})
	writeFile(t, f, "tmp/secret", "s")
	cases := []struct{ path, want string }{
		{"../../../tmp/secret", "s"},
		{"tmp/../../tmp/./secret", "s"},
		{"/tmp//secret", "s"},
	}
	for _, tc := range cases {
		if got := readFile(t, f, tc.path); got != tc.want {
			t.Errorf("%s: %q", tc.path, got)
		}
	}
	// Links resolve within the tree: absolute targets start at its root, ".." stops there.
	if errno := f.Symlink("/../../../../tmp", "data/up"); errno != 0 {
		t.Fatal(errno)
	}
	if got := readFile(t, f, "data/up/secret"); got != "s" {
		t.Fatalf("through a link %q", got)
	}
	if errno := f.Symlink("loop2", "tmp/loop1"); errno != 0 {
		t.Fatal(errno)
	}
	f.Symlink("loop1", "tmp/loop2")
	if _, errno := f.Stat("tmp/loop1"); errno != experimentalsys.ELOOP {
		t.Fatalf("link loop: %v, want ELOOP", errno)
	}
	if _, errno := f.Lstat("tmp/loop1"); errno != 0 {
		t.Fatalf("lstat of a link: %v", errno)
	}
	if target, errno := f.Readlink("data/up"); errno != 0 || target != "/../../../../tmp" {
		t.Fatalf("readlink %q %v", target, errno)
	}
	if _, errno := f.OpenFile("data/up", rdonly|experimentalsys.O_NOFOLLOW, 0); errno != experimentalsys.ELOOP {
		t.Fatalf("O_NOFOLLOW on a link: %v", errno)
	}
}

func TestQuotas(t *testing.T) {
	f := newTestFS(t, Limits{MaxBytes: 100, MaxFiles: 5})
	h, _ := f.OpenFile("tmp/a", wronly|creat, 0o644)
	if n, errno := h.Write(make([]byte, 60)); errno != 0 || n != 60 {
		t.Fatal(errno)
	}
	if _, errno := h.Write(make([]byte, 60)); errno != experimentalsys.EIO || f.TakeErrno() != wasiENOSPC {
		t.Fatalf("write past the byte quota: %v", errno)
	}
	if f.TakeErrno() != 0 {
		t.Fatal("TakeErrno must forget")
	}
	if errno := h.Truncate(1 << 50); errno != experimentalsys.EIO {
		t.Fatalf("huge truncate: %v", errno)
	}
	if _, errno := h.Pwrite([]byte{1}, 1<<45); errno != experimentalsys.EIO {
		t.Fatalf("write far past the end: %v", errno)
	}
	h.Close()
	// Unlinking an open file keeps its bytes charged until the last handle closes.
	h, _ = f.OpenFile("tmp/a", rdwr, 0)
	f.Unlink("tmp/a")
	if used, _ := f.Usage(); used != 60 {
		t.Fatalf("bytes of an unlinked, open file: %d", used)
	}
	if _, errno := h.Pwrite(make([]byte, 80), 60); errno != experimentalsys.EIO {
		t.Fatalf("writes to an unlinked file must still count: %v", errno)
	}
	h.Close()
	if used, files := f.Usage(); used != 0 || files != 2 {
		t.Fatalf("after close: %d bytes %d files", used, files)
	}
	for i := 0; i < 3; i++ {
		if errno := f.Mkdir("tmp/d"+string(rune('a'+i)), 0o755); errno != 0 {
			t.Fatal(errno)
		}
	}
	if errno := f.Mkdir("tmp/dz", 0o755); errno != experimentalsys.EIO || f.TakeErrno() != wasiENOSPC {
		t.Fatalf("mkdir past the file quota: %v", errno)
	}
	if err := f.WriteFile("/data/x", []byte("x"), 0o644); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("host write past the quota: %v", err)
	}
}

func TestHostAPI(t *testing.T) {
	f := newTestFS(t, Limits{})
	if err := f.WriteFile("/output/charts/a.png", []byte("png"), 0o644); err != nil {
		t.Fatal(err)
	}
	data, err := f.ReadFile("/output/charts/a.png", 0)
	if err != nil || string(data) != "png" {
		t.Fatalf("%q %v", data, err)
	}
	if _, err := f.ReadFile("/output/charts/a.png", 2); !errors.Is(err, fs.ErrInvalid) {
		t.Fatalf("size cap: %v", err)
	}
	if _, err := f.ReadFile("/output/none", 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	if _, err := f.ReadFile("/output", 0); !errors.Is(err, fs.ErrInvalid) {
		t.Fatalf("directory: %v", err)
	}
	ents, err := f.ReadDir("/output/charts")
	if err != nil || len(ents) != 1 || ents[0].Path != "/output/charts/a.png" || ents[0].Size != 3 {
		t.Fatalf("%+v %v", ents, err)
	}
	var walked []string
	f.Walk("/output", func(p string, _ int64) error { walked = append(walked, p); return nil })
	if strings.Join(walked, ",") != "/output/charts/a.png" {
		t.Fatalf("walk %v", walked)
	}
	if err := f.WriteFile("/usr/lib/py/x.py", nil, 0o644); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("write into the layer: %v", err)
	}
}

// wazero can pass strings that alias guest memory; what the filesystem keeps must not change when
// that memory does.
func TestStoredNamesAreCopies(t *testing.T) {
	f := newTestFS(t, Limits{})
	target := []byte("/data")
	name := []byte("tmp/link")
	if errno := f.Symlink(unsafe.String(&target[0], len(target)), unsafe.String(&name[0], len(name))); errno != 0 {
		t.Fatal(errno)
	}
	copy(target, "/XXXX")
	copy(name, "tmp/XXXX")
	if got, errno := f.Readlink("tmp/link"); errno != 0 || got != "/data" {
		t.Fatalf("readlink %q %v", got, errno)
	}
}

// TestSharedLayerIsNotWritten (issue 9 #16): many sandboxes open the same standard-library file at
// once, each under its own lock. Nothing may write the layer's nodes then: under -race a shared
// counter shows up as a data race, and without -race the node must read the same before and after.
func TestSharedLayerIsNotWritten(t *testing.T) {
	layer := newTestLayer(t)
	n := layer.root.children["os.py"]
	before := n.stat()
	beforeOpens, beforeLinks := n.opens, n.nlink
	const sandboxes, rounds = 8, 200
	var held, wg sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < sandboxes; i++ {
		f := newTestFSWith(t, Limits{}, layer)
		held.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One handle stays open across the check below; the others are opened and closed in a loop.
			keep, errno := f.OpenFile("/usr/lib/py/os.py", rdonly, 0)
			if errno != 0 {
				t.Errorf("open: %v", errno)
			}
			buf := make([]byte, 8)
			for j := 0; j < rounds; j++ {
				h, errno := f.OpenFile("/usr/lib/py/os.py", rdonly, 0)
				if errno != 0 {
					t.Errorf("open: %v", errno)
					break
				}
				h.Read(buf)
				h.Stat()
				h.Close()
			}
			held.Done()
			<-release
			if keep != nil {
				keep.Close()
			}
		}()
	}
	held.Wait()
	if n.opens != beforeOpens || n.nlink != beforeLinks || n.stat() != before {
		t.Errorf("shared node changed while %d sandboxes held it open: opens %d (was %d), nlink %d (was %d)",
			sandboxes, n.opens, beforeOpens, n.nlink, beforeLinks)
	}
	close(release)
	wg.Wait()
	if n.opens != beforeOpens || n.stat() != before {
		t.Errorf("shared node changed after every handle closed: opens %d (was %d)", n.opens, beforeOpens)
	}
}

// TestHugeOffsets (issue 9 #15): offsets near MaxInt64 must not wrap around the size checks (a
// pwrite at 2**63-1 used to panic with slice bounds out of range). They answer as POSIX does: EFBIG
// for writes and truncations past the largest file size, EINVAL for seeks, nothing read.
func TestHugeOffsets(t *testing.T) {
	const maxInt64 = 1<<63 - 1
	type op func(h experimentalsys.File) experimentalsys.Errno
	pwrite := func(b string, off int64) op {
		return func(h experimentalsys.File) experimentalsys.Errno {
			_, e := h.Pwrite([]byte(b), off)
			return e
		}
	}
	seek := func(off int64, whence int) op {
		return func(h experimentalsys.File) experimentalsys.Errno {
			_, e := h.Seek(off, whence)
			return e
		}
	}
	cases := []struct {
		name    string
		op      op
		errno   experimentalsys.Errno
		pending int32 // the errno an EIO stands for (TakeErrno)
	}{
		{"pwrite at MaxInt64", pwrite("x", maxInt64), experimentalsys.EIO, wasiEFBIG},
		{"pwrite ending past MaxInt64", pwrite("xyz", maxInt64-1), experimentalsys.EIO, wasiEFBIG},
		{"pwrite at the size limit", pwrite("x", maxFileSize), experimentalsys.EIO, wasiEFBIG},
		{"pwrite just below the limit hits the quota", pwrite("xy", maxFileSize-1), experimentalsys.EIO, wasiENOSPC},
		{"write after seeking to the limit", func(h experimentalsys.File) experimentalsys.Errno {
			if _, e := h.Seek(maxFileSize, io.SeekStart); e != 0 {
				return e
			}
			_, e := h.Write([]byte("x"))
			return e
		}, experimentalsys.EIO, wasiEFBIG},
		{"seek MaxInt64 from the current offset", seek(maxInt64, io.SeekCurrent), experimentalsys.EINVAL, 0},
		{"seek MaxInt64 from the end", seek(maxInt64, io.SeekEnd), experimentalsys.EINVAL, 0},
		{"seek MinInt64 from the end", seek(-maxInt64-1, io.SeekEnd), experimentalsys.EINVAL, 0},
		{"seek past the limit", seek(maxFileSize+1, io.SeekStart), experimentalsys.EINVAL, 0},
		{"truncate to MaxInt64", func(h experimentalsys.File) experimentalsys.Errno {
			return h.Truncate(maxInt64)
		}, experimentalsys.EIO, wasiEFBIG},
		{"pread at MaxInt64 reads nothing", func(h experimentalsys.File) experimentalsys.Errno {
			n, e := h.Pread(make([]byte, 4), maxInt64)
			if n != 0 {
				t.Errorf("pread read %d bytes", n)
			}
			return e
		}, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newTestFS(t, Limits{MaxBytes: 1 << 20})
			h, errno := f.OpenFile("/tmp/f", rdwr|creat, 0o644)
			if errno != 0 {
				t.Fatal(errno)
			}
			defer h.Close()
			if _, errno := h.Write([]byte("0123456789")); errno != 0 {
				t.Fatal(errno)
			}
			if errno := c.op(h); errno != c.errno {
				t.Fatalf("errno %v, want %v", errno, c.errno)
			}
			if got := f.TakeErrno(); got != c.pending {
				t.Fatalf("meant errno %d, want %d", got, c.pending)
			}
			// The file and the quota are as they were, and the handle still works.
			if used, _ := f.Usage(); used != 10 {
				t.Fatalf("%d bytes in use, want 10", used)
			}
			if n, errno := h.Pread(make([]byte, 20), 0); n != 10 || errno != 0 {
				t.Fatalf("pread after: %d %v", n, errno)
			}
		})
	}
}
