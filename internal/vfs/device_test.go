package vfs

import (
	"errors"
	"io/fs"
	"testing"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
)

// countingDevice hands out handles that remember the flags they were opened with.
type countingDevice struct{ opens []experimentalsys.Oflag }

type devHandle struct {
	experimentalsys.UnimplementedFile
	n int
}

func (d *countingDevice) Open(flag experimentalsys.Oflag) (experimentalsys.File, experimentalsys.Errno) {
	d.opens = append(d.opens, flag)
	return &devHandle{n: len(d.opens)}, 0
}

func TestDevices(t *testing.T) {
	f := newTestFS(t, Limits{})
	dev := &countingDevice{}
	if err := f.AddDevices("/dev/agentbox", map[string]Device{"http": dev}); err != nil {
		t.Fatal(err)
	}
	usedBytes, usedFiles := f.Usage()

	t.Run("each open gets its own handle from the device", func(t *testing.T) {
		h1, errno := f.OpenFile("/dev/agentbox/http", rdwr, 0)
		if errno != 0 {
			t.Fatal(errno)
		}
		h2, errno := f.OpenFile("/dev/agentbox/http", wronly|creat|trunc, 0)
		if errno != 0 {
			t.Fatal(errno)
		}
		if h1.(*devHandle).n != 1 || h2.(*devHandle).n != 2 || len(dev.opens) != 2 || dev.opens[1] != wronly|creat|trunc {
			t.Fatalf("handles %v %v, opens %v", h1, h2, dev.opens)
		}
	})
	t.Run("stat says character device", func(t *testing.T) {
		st, errno := f.Stat("/dev/agentbox/http")
		if errno != 0 {
			t.Fatal(errno)
		}
		if st.Mode&fs.ModeCharDevice == 0 || st.Mode&fs.ModeDevice == 0 {
			t.Fatalf("mode %v", st.Mode)
		}
	})
	for _, c := range []struct {
		name string
		op   func() experimentalsys.Errno
		want experimentalsys.Errno
	}{
		{"unlink is refused", func() experimentalsys.Errno { return f.Unlink("/dev/agentbox/http") }, experimentalsys.EROFS},
		{"rename away is refused", func() experimentalsys.Errno { return f.Rename("/dev/agentbox/http", "/tmp/x") }, experimentalsys.EROFS},
		{"replacing by rename is refused", func() experimentalsys.Errno {
			h, errno := f.OpenFile("/tmp/fake", rdwr|creat, 0o644)
			if errno != 0 {
				return errno
			}
			h.Close()
			return f.Rename("/tmp/fake", "/dev/agentbox/http")
		}, experimentalsys.EROFS},
		{"creating beside it is refused", func() experimentalsys.Errno {
			_, errno := f.OpenFile("/dev/agentbox/other", rdwr|creat, 0o644)
			return errno
		}, experimentalsys.EROFS},
		{"hard link is refused", func() experimentalsys.Errno { return f.Link("/dev/agentbox/http", "/tmp/link") }, experimentalsys.EROFS},
		{"removing the directory is refused", func() experimentalsys.Errno { return f.Rmdir("/dev/agentbox") }, experimentalsys.EROFS},
		{"opening as a directory is refused", func() experimentalsys.Errno {
			_, errno := f.OpenFile("/dev/agentbox/http", rdonly|experimentalsys.O_DIRECTORY, 0)
			return errno
		}, experimentalsys.ENOTDIR},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := c.op(); got != c.want {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
	t.Run("the host does not read it as a file", func(t *testing.T) {
		if _, err := f.ReadFile("/dev/agentbox/http", 0); !errors.Is(err, fs.ErrInvalid) {
			t.Fatalf("ReadFile: %v", err)
		}
	})
	t.Run("devices charge no quota", func(t *testing.T) {
		f.Unlink("/tmp/fake")
		if b, n := f.Usage(); b != usedBytes || n != usedFiles {
			t.Fatalf("usage %d/%d, was %d/%d", b, n, usedBytes, usedFiles)
		}
	})
}

func TestAddDevicesRefusesBadInput(t *testing.T) {
	for _, c := range []struct {
		name string
		dir  string
		devs map[string]Device
	}{
		{"no devices", "/dev/a", nil},
		{"name with a slash", "/dev/b", map[string]Device{"x/y": &countingDevice{}}},
		{"dot dot", "/dev/c", map[string]Device{"..": &countingDevice{}}},
		{"nil device", "/dev/d", map[string]Device{"x": nil}},
		{"existing path", "/tmp", map[string]Device{"x": &countingDevice{}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newTestFS(t, Limits{})
			if err := f.AddDevices(c.dir, c.devs); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
