package vfs

import (
	"errors"
	"fmt"
	"io/fs"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
)

// Device serves a character device node: every open of the node gets a handle of its own from Open.
// The host uses it for channels that are not files (the nano tier's HTTP bridge: one handle is one
// request and its response). Open is called with the filesystem's lock held, so it must not block
// or call back into the filesystem; the handle's methods run without it.
type Device interface {
	Open(flag experimentalsys.Oflag) (experimentalsys.File, experimentalsys.Errno)
}

// AddDevices places the devices, by name, in a new read-only directory dir (its parents are made
// writable if missing): the guest can open them but not remove, rename or replace them. It charges
// no quota, like Mount.
func (f *FS) AddDevices(dir string, devs map[string]Device) error {
	if len(devs) == 0 {
		return errors.New("adding devices: none given")
	}
	d := newNode(fs.ModeDir | 0o555)
	d.readonly = true
	for name, dev := range devs {
		if name == "" || name == "." || name == ".." || len(name) > 255 || splitPath(name)[0] != name {
			return fmt.Errorf("adding devices: %q is not a file name", name)
		}
		if dev == nil {
			return fmt.Errorf("adding device %q: nil device", name)
		}
		n := newNode(fs.ModeDevice | fs.ModeCharDevice | 0o666)
		n.readonly = true
		n.dev = dev
		d.children[name] = n
	}
	return f.Mount(dir, &Layer{root: d})
}
