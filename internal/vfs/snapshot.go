package vfs

import (
	"io/fs"
	"path"
)

// Version identifies the content of a writable file as it is now: two equal Versions have equal
// content, so a snapshot re-reads only the files whose Version changed since the last one. It is
// comparable and means nothing across filesystems.
type Version struct {
	n   *node
	gen uint64
}

// TreeEntry is one name in the writable tree, as Tree reports it.
type TreeEntry struct {
	Path string
	// Mode holds the type bits (directory, symbolic link; none for a regular file) and permissions.
	Mode         fs.FileMode
	Size         int64 // a regular file's length
	Mtime, Atime int64 // unix nanoseconds
	Target       string
	// LinkOf is the Path of an earlier entry naming the same regular file (a hard link), or "".
	LinkOf string
	// Version identifies a regular file's content.
	Version Version
	// Opens counts the open handles on a regular file or directory.
	Opens int
}

// Tree calls fn for every name in the writable tree, parents before their children and in name
// order. For a regular file data is its content: valid only during fn, which runs under the
// filesystem's lock and must not call back into it. Read-only layers (mounts, devices) are left
// out, and so are the writable directories that only lead to one (such as /usr/local/lib): they
// are the host's set-up, made again by whoever rebuilds the tree. Files removed while still open
// have no name and are not reported.
func (f *FS) Tree(fn func(e TreeEntry, data []byte) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := map[*node]string{}
	scaffold := map[*node]bool{}
	leadsToLayer(f.root, scaffold)
	var walk func(dir *node, p string) error
	walk = func(dir *node, p string) error {
		for _, d := range sortedDirents(dir) {
			c := dir.children[d.Name]
			if c.readonly {
				continue
			}
			cp := path.Join(p, d.Name)
			if scaffold[c] {
				if err := walk(c, cp); err != nil {
					return err
				}
				continue
			}
			e := TreeEntry{Path: cp, Mode: c.mode, Mtime: c.mtim, Atime: c.atim, Opens: c.opens}
			var data []byte
			switch {
			case c.isSymlink():
				e.Target = c.target
			case c.mode.IsRegular():
				if first, ok := seen[c]; ok {
					e.LinkOf = first
				} else {
					seen[c] = cp
					e.Size, e.Version, data = int64(len(c.data)), Version{n: c, gen: c.gen}, c.data
				}
			}
			if err := fn(e, data); err != nil {
				return err
			}
			if c.isDir() {
				if err := walk(c, cp); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(f.root, "/")
}

// leadsToLayer reports whether a writable directory holds a read-only layer, directly or below,
// and marks in out every directory below dir that does.
func leadsToLayer(dir *node, out map[*node]bool) bool {
	leads := false
	for _, c := range dir.children {
		if c.readonly {
			leads = true
		} else if c.isDir() && leadsToLayer(c, out) {
			leads = true
		}
	}
	if leads {
		out[dir] = true
	}
	return leads
}
