package vfs

import (
	"archive/zip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
)

// Layer is an immutable directory tree shared, read-only, by every filesystem it is mounted in.
type Layer struct {
	root *node
}

// NewLayerFromZip builds a layer from the entries of a zip archive below prefix (e.g. "lib/python3.11").
// File contents are decompressed on first read and then kept, once for all sandboxes.
func NewLayerFromZip(zr *zip.Reader, prefix string) (*Layer, error) {
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	root := &node{mode: fs.ModeDir | 0o555, ino: nextIno(), readonly: true, children: map[string]*node{}, mtim: mtime, atim: mtime, ctim: mtime, nlink: 2}
	prefix = strings.Trim(prefix, "/") + "/"
	dirFor := func(p string) *node {
		cur := root
		for _, c := range splitPath(p) {
			next := cur.children[c]
			if next == nil {
				next = &node{mode: fs.ModeDir | 0o555, ino: nextIno(), readonly: true, children: map[string]*node{}, mtim: mtime, atim: mtime, ctim: mtime, nlink: 2}
				cur.children[c] = next
				cur.nlink++
			}
			cur = next
		}
		return cur
	}
	for _, zf := range zr.File {
		name, ok := strings.CutPrefix(zf.Name, prefix)
		if !ok || name == "" {
			continue
		}
		if !fs.ValidPath(strings.TrimSuffix(name, "/")) {
			return nil, fmt.Errorf("layer entry %q: invalid path", zf.Name)
		}
		if strings.HasSuffix(name, "/") {
			dirFor(name)
			continue
		}
		if zf.UncompressedSize64 > maxFileSize {
			return nil, fmt.Errorf("layer entry %q: %d bytes is more than a file may hold", zf.Name, zf.UncompressedSize64)
		}
		dir, base := path.Split(name)
		parent := dirFor(dir)
		zf := zf
		parent.children[base] = &node{
			mode: 0o444, ino: nextIno(), readonly: true, mtim: mtime, atim: mtime, ctim: mtime, nlink: 1,
			size: int64(zf.UncompressedSize64),
			load: func() ([]byte, error) {
				rc, err := zf.Open()
				if err != nil {
					return nil, err
				}
				defer rc.Close()
				return io.ReadAll(rc)
			},
		}
	}
	return &Layer{root: root}, nil
}

// Mount places a read-only layer at dir (created, with its parents, if missing). Mounting is host set-up
// and charges no quota.
func (f *FS) Mount(dir string, layer *Layer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	comps := splitPath(dir)
	if len(comps) == 0 {
		return errors.New("mounting a layer: cannot mount at the root")
	}
	cur := f.root
	for i, c := range comps {
		if i == len(comps)-1 {
			if cur.children[c] != nil {
				return fmt.Errorf("mounting a layer at %q: path exists", dir)
			}
			cur.children[c] = layer.root
			cur.nlink++
			return nil
		}
		next := cur.children[c]
		if next == nil {
			next = newNode(fs.ModeDir | 0o755)
			cur.children[c] = next
			cur.nlink++
		} else if !next.isDir() || next.readonly {
			return fmt.Errorf("mounting a layer at %q: %q is not a writable directory", dir, c)
		}
		cur = next
	}
	return nil
}

// PathError is a host-side filesystem error. Err is one of fs.ErrNotExist, fs.ErrExist,
// fs.ErrInvalid, fs.ErrPermission, ErrNoSpace, or an errno from wazero's sys package.
type PathError = fs.PathError

func hostErr(op, p string, errno experimentalsys.Errno) error {
	if errno == 0 {
		return nil
	}
	var err error
	switch errno {
	case experimentalsys.ENOENT:
		err = fs.ErrNotExist
	case experimentalsys.EEXIST:
		err = fs.ErrExist
	case experimentalsys.EINVAL, experimentalsys.ENOTDIR, experimentalsys.EISDIR, experimentalsys.ENAMETOOLONG, experimentalsys.ELOOP:
		err = fmt.Errorf("%w: %s", fs.ErrInvalid, errno.Error())
	case experimentalsys.EROFS, experimentalsys.EPERM, experimentalsys.EACCES:
		err = fmt.Errorf("%w: %s", fs.ErrPermission, errno.Error())
	case experimentalsys.EIO:
		err = errno
	default:
		err = errno
	}
	return &fs.PathError{Op: op, Path: p, Err: err}
}

// WriteFile creates or replaces the file at p (an absolute path inside the sandbox), creating missing
// parent directories. It is charged against the quotas like a guest write.
func (f *FS) WriteFile(p string, data []byte, perm fs.FileMode) error {
	if err := f.MkdirAll(path.Dir(cleanAbs(p)), 0o755); err != nil {
		return err
	}
	h, errno := f.OpenFile(p, experimentalsys.O_WRONLY|experimentalsys.O_CREAT|experimentalsys.O_TRUNC, perm)
	if errno != 0 {
		return f.quotaErr("write", p, errno)
	}
	defer h.Close()
	if _, errno := h.Write(data); errno != 0 {
		return f.quotaErr("write", p, errno)
	}
	return nil
}

func (f *FS) quotaErr(op, p string, errno experimentalsys.Errno) error {
	if errno == experimentalsys.EIO {
		switch f.TakeErrno() {
		case wasiENOSPC:
			return &fs.PathError{Op: op, Path: p, Err: ErrNoSpace}
		case wasiEFBIG:
			return &fs.PathError{Op: op, Path: p, Err: fmt.Errorf("%w: file too large", fs.ErrInvalid)}
		}
	}
	return hostErr(op, p, errno)
}

func cleanAbs(p string) string { return path.Clean("/" + p) }

// MkdirAll creates the directory p and any missing parents.
func (f *FS) MkdirAll(p string, perm fs.FileMode) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := ""
	for _, c := range splitPath(cleanAbs(p)) {
		cur += "/" + c
		l, errno := f.resolve(cur, true)
		if errno != 0 {
			return hostErr("mkdir", cur, errno)
		}
		if l.node != nil {
			if !l.node.isDir() {
				return hostErr("mkdir", cur, experimentalsys.ENOTDIR)
			}
			continue
		}
		if errno := f.mkdir(cur, perm); errno != 0 {
			return f.quotaErr("mkdir", cur, errno)
		}
	}
	return nil
}

// ReadFile returns a copy of the content of the regular file at p (symbolic links followed, within
// the tree). max > 0 refuses files larger than max bytes.
func (f *FS) ReadFile(p string, max int64) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, errno := f.resolve(p, true)
	if errno != 0 {
		return nil, hostErr("read", p, errno)
	}
	if l.node == nil {
		return nil, hostErr("read", p, experimentalsys.ENOENT)
	}
	if !l.node.mode.IsRegular() {
		return nil, hostErr("read", p, experimentalsys.EISDIR)
	}
	if max > 0 && l.node.fileSize() > max {
		return nil, &fs.PathError{Op: "read", Path: p, Err: fmt.Errorf("%w: file is %d bytes, more than the %d allowed", fs.ErrInvalid, l.node.fileSize(), max)}
	}
	data, errno := l.node.content()
	if errno != 0 {
		return nil, hostErr("read", p, errno)
	}
	return append([]byte(nil), data...), nil
}

// Entry describes one name in a directory listing.
type Entry struct {
	Name    string      `json:"name"`
	Path    string      `json:"path"`
	Size    int64       `json:"size"`
	Mode    fs.FileMode `json:"-"`
	IsDir   bool        `json:"is_dir"`
	ModTime time.Time   `json:"mod_time"`
}

// ReadDir lists the directory at p in name order.
func (f *FS) ReadDir(p string) ([]Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, errno := f.resolve(p, true)
	if errno != 0 {
		return nil, hostErr("readdir", p, errno)
	}
	if l.node == nil {
		return nil, hostErr("readdir", p, experimentalsys.ENOENT)
	}
	if !l.node.isDir() {
		return nil, hostErr("readdir", p, experimentalsys.ENOTDIR)
	}
	dir := cleanAbs(p)
	var out []Entry
	for _, d := range sortedDirents(l.node) {
		c := l.node.children[d.Name]
		st := c.stat()
		out = append(out, Entry{Name: d.Name, Path: path.Join(dir, d.Name), Size: st.Size, Mode: c.mode,
			IsDir: c.isDir(), ModTime: time.Unix(0, st.Mtim).UTC()})
	}
	return out, nil
}

// Walk calls fn for every regular file below dir in the writable tree, in name order.
func (f *FS) Walk(dir string, fn func(p string, size int64) error) error {
	entries, err := f.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir {
			if err := f.Walk(e.Path, fn); err != nil {
				return err
			}
		} else if e.Mode.IsRegular() {
			if err := fn(e.Path, e.Size); err != nil {
				return err
			}
		}
	}
	return nil
}
