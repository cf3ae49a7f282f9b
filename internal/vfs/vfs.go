// Package vfs is the nano tier's filesystem: a private, writable, in-memory tree per sandbox over
// read-only layers shared by all sandboxes (the standard library), served to the guest through wazero's
// experimental sys.FS interface and to the host through plain Go methods.
//
// Nothing here touches the host filesystem. Paths are resolved inside the tree only: ".." stops at the
// root and symbolic links are resolved against the tree's own root, so no path can leave it. Quotas on
// bytes and on the number of files are enforced on every write; hitting one fails the call with ENOSPC.
package vfs

import (
	"errors"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/sys"
)

// Default quotas, used where Limits leaves a field zero.
const (
	DefaultMaxBytes = 64 << 20
	DefaultMaxFiles = 10_000
)

// maxSymlinkHops bounds symbolic-link resolution, as Linux's MAXSYMLINKS does.
const maxSymlinkHops = 40

// WASI errnos that wazero's Errno set lacks: the guest learns them through TakeErrno (see
// build/pywasm/embed.c).
const (
	wasiEFBIG  = 22 // file too large
	wasiENOSPC = 51 // no space left on device
)

// ErrNoSpace is returned by host-side writes that would exceed a quota.
var ErrNoSpace = errors.New("no space left in sandbox filesystem")

// Limits are a filesystem's quotas.
type Limits struct {
	// MaxBytes caps the total size of the files in the writable tree; zero means DefaultMaxBytes.
	MaxBytes int64
	// MaxFiles caps how many files, directories and links the writable tree holds; zero means
	// DefaultMaxFiles.
	MaxFiles int
}

var inodes atomic.Uint64

func nextIno() uint64 { return inodes.Add(1) }

type node struct {
	mode     fs.FileMode // type bits and permissions
	ino      uint64
	readonly bool // part of a shared layer: never modified
	mtim     int64
	atim     int64
	ctim     int64

	children map[string]*node // directories
	target   string           // symbolic links
	dev      Device           // character devices (AddDevices): opens go to it

	// Regular files. A read-only file may load its content lazily (load), once.
	data     []byte
	loadOnce sync.Once
	load     func() ([]byte, error)
	loadErr  error
	size     int64 // of a lazily loaded file, known up front

	// Counts kept for writable nodes only: a read-only node belongs to a layer that many filesystems
	// (each under its own lock) share, so nothing about it may change after the layer is built.
	nlink int // names pointing at this node
	opens int // open handles
	// gen counts changes to a writable file's content, so that a snapshot re-reads only files
	// changed since the last one (see Version).
	gen uint64
}

func (n *node) isDir() bool     { return n.mode.IsDir() }
func (n *node) isSymlink() bool { return n.mode&fs.ModeSymlink != 0 }

func (n *node) content() ([]byte, experimentalsys.Errno) {
	if n.load == nil {
		return n.data, 0
	}
	n.loadOnce.Do(func() { n.data, n.loadErr = n.load() })
	if n.loadErr != nil {
		return nil, experimentalsys.EIO
	}
	return n.data, 0
}

func (n *node) fileSize() int64 {
	if n.load != nil {
		return n.size
	}
	return int64(len(n.data))
}

func (n *node) stat() sys.Stat_t {
	size := n.fileSize()
	if n.isDir() {
		size = 4096
	} else if n.isSymlink() {
		size = int64(len(n.target))
	}
	nlink := uint64(n.nlink)
	if nlink == 0 {
		nlink = 1
	}
	return sys.Stat_t{Dev: 1, Ino: n.ino, Mode: n.mode, Nlink: nlink, Size: size, Atim: n.atim, Mtim: n.mtim, Ctim: n.ctim}
}

// FS is one sandbox's filesystem. Its methods are safe for concurrent use.
type FS struct {
	experimentalsys.UnimplementedFS

	mu        sync.Mutex
	root      *node
	maxBytes  int64
	maxFiles  int
	usedBytes int64
	usedFiles int
	pending   atomic.Int32 // errno meant by the last EIO returned to the guest
}

// New returns an empty filesystem with the given quotas.
func New(limits Limits) *FS {
	if limits.MaxBytes <= 0 {
		limits.MaxBytes = DefaultMaxBytes
	}
	if limits.MaxFiles <= 0 {
		limits.MaxFiles = DefaultMaxFiles
	}
	now := time.Now().UnixNano()
	return &FS{
		root:     &node{mode: fs.ModeDir | 0o755, ino: nextIno(), children: map[string]*node{}, mtim: now, atim: now, ctim: now, nlink: 2},
		maxBytes: limits.MaxBytes,
		maxFiles: limits.MaxFiles,
	}
}

// Usage reports the bytes and entries the writable tree holds.
func (f *FS) Usage() (bytes int64, files int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.usedBytes, f.usedFiles
}

// TakeErrno returns, and forgets, the errno the last EIO returned to the guest stood for (0 if none).
func (f *FS) TakeErrno() int32 { return f.pending.Swap(0) }

func (f *FS) noSpace() experimentalsys.Errno {
	f.pending.Store(wasiENOSPC)
	return experimentalsys.EIO
}

// tooBig answers a write or truncation past maxFileSize.
func (f *FS) tooBig() experimentalsys.Errno {
	f.pending.Store(wasiEFBIG)
	return experimentalsys.EIO
}

// lookup is the result of resolving a path: the directory holding the last name, the name, and the node
// it names (nil if absent). parent is nil when the path names the root (or ends in "..").
type lookup struct {
	parent *node
	name   string
	node   *node
}

func splitPath(p string) []string {
	parts := strings.Split(p, "/")
	out := parts[:0]
	for _, c := range parts {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

// resolve walks p from the root. Symbolic links in the middle of the path are always followed; a link
// in last place only when follow is set. Links resolve within the tree: an absolute target starts again
// at this tree's root, and ".." never climbs above it.
func (f *FS) resolve(p string, follow bool) (lookup, experimentalsys.Errno) {
	if strings.IndexByte(p, 0) >= 0 {
		return lookup{}, experimentalsys.EINVAL
	}
	comps := splitPath(p)
	cur := f.root
	var stack []*node
	hops := 0
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		if c == ".." {
			if len(stack) > 0 {
				cur = stack[len(stack)-1]
				stack = stack[:len(stack)-1]
			}
			if len(comps) == 0 {
				return lookup{node: cur}, 0
			}
			continue
		}
		if !cur.isDir() {
			return lookup{}, experimentalsys.ENOTDIR
		}
		if len(c) > 255 {
			return lookup{}, experimentalsys.ENAMETOOLONG
		}
		child := cur.children[c]
		last := len(comps) == 0
		if child != nil && child.isSymlink() && (!last || follow) {
			if hops++; hops > maxSymlinkHops {
				return lookup{}, experimentalsys.ELOOP
			}
			if strings.HasPrefix(child.target, "/") {
				cur, stack = f.root, nil
			}
			comps = append(splitPath(child.target), comps...)
			if len(comps) == 0 { // a link to "/" or "."
				return lookup{node: cur}, 0
			}
			continue
		}
		if last {
			return lookup{parent: cur, name: c, node: child}, 0
		}
		if child == nil {
			return lookup{}, experimentalsys.ENOENT
		}
		if !child.isDir() {
			return lookup{}, experimentalsys.ENOTDIR
		}
		stack = append(stack, cur)
		cur = child
	}
	return lookup{node: cur}, 0
}

func (f *FS) chargeFile() experimentalsys.Errno {
	if f.usedFiles >= f.maxFiles {
		return f.noSpace()
	}
	f.usedFiles++
	return 0
}

// resize sets a writable file's length, charging or refunding the byte quota.
func (f *FS) resize(n *node, size int64) experimentalsys.Errno {
	old := int64(len(n.data))
	if size == old {
		return 0
	}
	if size > old && size-old > f.maxBytes-f.usedBytes {
		return f.noSpace()
	}
	n.gen++
	f.usedBytes += size - old
	if size < old {
		clear(n.data[size:old])
		n.data = n.data[:size]
		return 0
	}
	if int64(cap(n.data)) >= size {
		n.data = n.data[:size]
		return 0
	}
	grown := make([]byte, size, growCap(old, size))
	copy(grown, n.data)
	n.data = grown
	return 0
}

// growCap amortises appends without letting capacity run far past the quota-checked size.
func growCap(old, size int64) int64 {
	c := old * 2
	if c < size {
		c = size
	}
	if c-size > 4<<20 {
		c = size + 4<<20
	}
	return c
}

// release frees a node's quota once no name and no handle refers to it any more.
func (f *FS) release(n *node) {
	if n.nlink > 0 || n.opens > 0 || n.readonly {
		return
	}
	f.usedBytes -= int64(len(n.data))
	n.data = nil
	f.usedFiles--
}

func touch(n *node) {
	now := time.Now().UnixNano()
	n.mtim, n.ctim = now, now
}

func newNode(mode fs.FileMode) *node {
	now := time.Now().UnixNano()
	n := &node{mode: mode, ino: nextIno(), mtim: now, atim: now, ctim: now, nlink: 1}
	if mode.IsDir() {
		n.children = map[string]*node{}
		n.nlink = 2
	}
	return n
}

// OpenFile implements experimentalsys.FS.
func (f *FS) OpenFile(path string, flag experimentalsys.Oflag, perm fs.FileMode) (experimentalsys.File, experimentalsys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	follow := flag&experimentalsys.O_NOFOLLOW == 0
	l, errno := f.resolve(path, follow)
	if errno != 0 {
		return nil, errno
	}
	access := flag & (experimentalsys.O_RDONLY | experimentalsys.O_RDWR | experimentalsys.O_WRONLY)
	writing := access == experimentalsys.O_RDWR || access == experimentalsys.O_WRONLY
	n := l.node
	if n == nil {
		if flag&experimentalsys.O_CREAT == 0 || flag&experimentalsys.O_DIRECTORY != 0 {
			return nil, experimentalsys.ENOENT
		}
		if strings.HasSuffix(path, "/") {
			return nil, experimentalsys.EISDIR
		}
		if l.parent.readonly {
			return nil, experimentalsys.EROFS
		}
		if errno := f.chargeFile(); errno != 0 {
			return nil, errno
		}
		n = newNode(perm.Perm() &^ 0o022)
		l.parent.children[strings.Clone(l.name)] = n
		touch(l.parent)
	} else {
		if flag&(experimentalsys.O_CREAT|experimentalsys.O_EXCL) == experimentalsys.O_CREAT|experimentalsys.O_EXCL {
			return nil, experimentalsys.EEXIST
		}
		if n.isSymlink() {
			return nil, experimentalsys.ELOOP // O_NOFOLLOW on a link
		}
		if n.dev != nil {
			if flag&experimentalsys.O_DIRECTORY != 0 {
				return nil, experimentalsys.ENOTDIR
			}
			return n.dev.Open(flag)
		}
		if flag&experimentalsys.O_DIRECTORY != 0 && !n.isDir() {
			return nil, experimentalsys.ENOTDIR
		}
		if n.isDir() && (writing || flag&experimentalsys.O_TRUNC != 0) {
			return nil, experimentalsys.EISDIR
		}
		if !n.isDir() && strings.HasSuffix(path, "/") {
			return nil, experimentalsys.ENOTDIR
		}
		if n.readonly && (writing || flag&experimentalsys.O_TRUNC != 0) {
			return nil, experimentalsys.EROFS
		}
		if flag&experimentalsys.O_TRUNC != 0 && writing {
			if errno := f.resize(n, 0); errno != 0 {
				return nil, errno
			}
			touch(n)
		}
	}
	if !n.readonly {
		n.opens++ // a shared node needs no count: release never frees it
	}
	return &file{fs: f, n: n, read: access != experimentalsys.O_WRONLY, write: writing,
		append: flag&experimentalsys.O_APPEND != 0}, 0
}

// Stat implements experimentalsys.FS.
func (f *FS) Stat(path string) (sys.Stat_t, experimentalsys.Errno) { return f.stat(path, true) }

// Lstat implements experimentalsys.FS.
func (f *FS) Lstat(path string) (sys.Stat_t, experimentalsys.Errno) { return f.stat(path, false) }

func (f *FS) stat(path string, follow bool) (sys.Stat_t, experimentalsys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, errno := f.resolve(path, follow)
	if errno != 0 {
		return sys.Stat_t{}, errno
	}
	if l.node == nil {
		return sys.Stat_t{}, experimentalsys.ENOENT
	}
	if strings.HasSuffix(path, "/") && !l.node.isDir() {
		return sys.Stat_t{}, experimentalsys.ENOTDIR
	}
	return l.node.stat(), 0
}

// Mkdir implements experimentalsys.FS.
func (f *FS) Mkdir(path string, perm fs.FileMode) experimentalsys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mkdir(path, perm)
}

func (f *FS) mkdir(path string, perm fs.FileMode) experimentalsys.Errno {
	l, errno := f.resolve(path, false)
	if errno != 0 {
		return errno
	}
	if l.node != nil || l.parent == nil {
		return experimentalsys.EEXIST
	}
	if l.parent.readonly {
		return experimentalsys.EROFS
	}
	if errno := f.chargeFile(); errno != 0 {
		return errno
	}
	l.parent.children[strings.Clone(l.name)] = newNode(fs.ModeDir | perm.Perm())
	l.parent.nlink++
	touch(l.parent)
	return 0
}

// Chmod implements experimentalsys.FS.
func (f *FS) Chmod(path string, perm fs.FileMode) experimentalsys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, errno := f.resolve(path, true)
	if errno != 0 {
		return errno
	}
	if l.node == nil {
		return experimentalsys.ENOENT
	}
	if l.node.readonly {
		return experimentalsys.EROFS
	}
	l.node.mode = l.node.mode.Type() | perm.Perm()
	l.node.ctim = time.Now().UnixNano()
	return 0
}

// Rename implements experimentalsys.FS with POSIX rename(2) semantics.
func (f *FS) Rename(from, to string) experimentalsys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	src, errno := f.resolve(from, false)
	if errno != 0 {
		return errno
	}
	if src.node == nil {
		return experimentalsys.ENOENT
	}
	if src.parent == nil {
		return experimentalsys.EINVAL
	}
	dst, errno := f.resolve(to, false)
	if errno != 0 {
		return errno
	}
	if dst.parent == nil {
		return experimentalsys.EINVAL
	}
	if src.parent.readonly || dst.parent.readonly || src.node.readonly || dst.node != nil && dst.node.readonly {
		return experimentalsys.EROFS
	}
	if src.node == dst.node {
		return 0
	}
	if src.node.isDir() {
		// A directory cannot move into itself or below itself.
		if f.contains(src.node, dst.parent) {
			return experimentalsys.EINVAL
		}
		if dst.node != nil {
			if !dst.node.isDir() {
				return experimentalsys.ENOTDIR
			}
			if len(dst.node.children) > 0 {
				return experimentalsys.ENOTEMPTY
			}
		}
	} else if dst.node != nil && dst.node.isDir() {
		return experimentalsys.EISDIR
	}
	if dst.node != nil {
		f.unlinkNode(dst.parent, dst.name, dst.node)
	}
	delete(src.parent.children, src.name)
	dst.parent.children[strings.Clone(dst.name)] = src.node
	if src.node.isDir() {
		src.parent.nlink--
		dst.parent.nlink++
	}
	touch(src.parent)
	touch(dst.parent)
	src.node.ctim = time.Now().UnixNano()
	return 0
}

// contains reports whether d is dir or lies below it.
func (f *FS) contains(dir, d *node) bool {
	if dir == d {
		return true
	}
	for _, c := range dir.children {
		if c.isDir() && f.contains(c, d) {
			return true
		}
	}
	return false
}

func (f *FS) unlinkNode(parent *node, name string, n *node) {
	delete(parent.children, name)
	if n.isDir() {
		parent.nlink--
		n.nlink = 0
	} else {
		n.nlink--
	}
	touch(parent)
	f.release(n)
}

// Rmdir implements experimentalsys.FS.
func (f *FS) Rmdir(path string) experimentalsys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, errno := f.resolve(path, false)
	if errno != 0 {
		return errno
	}
	if l.node == nil {
		return experimentalsys.ENOENT
	}
	if l.parent == nil {
		return experimentalsys.EINVAL
	}
	if !l.node.isDir() {
		return experimentalsys.ENOTDIR
	}
	if l.node.readonly || l.parent.readonly {
		return experimentalsys.EROFS
	}
	if len(l.node.children) > 0 {
		return experimentalsys.ENOTEMPTY
	}
	f.unlinkNode(l.parent, l.name, l.node)
	return 0
}

// Unlink implements experimentalsys.FS.
func (f *FS) Unlink(path string) experimentalsys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, errno := f.resolve(path, false)
	if errno != 0 {
		return errno
	}
	if l.node == nil {
		return experimentalsys.ENOENT
	}
	if l.parent == nil || l.node.isDir() {
		return experimentalsys.EISDIR
	}
	if l.node.readonly || l.parent.readonly {
		return experimentalsys.EROFS
	}
	f.unlinkNode(l.parent, l.name, l.node)
	return 0
}

// Link implements experimentalsys.FS (hard links to regular files).
func (f *FS) Link(oldPath, newPath string) experimentalsys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	src, errno := f.resolve(oldPath, false)
	if errno != 0 {
		return errno
	}
	if src.node == nil {
		return experimentalsys.ENOENT
	}
	if src.node.isDir() {
		return experimentalsys.EPERM
	}
	dst, errno := f.resolve(newPath, false)
	if errno != 0 {
		return errno
	}
	if dst.node != nil || dst.parent == nil {
		return experimentalsys.EEXIST
	}
	if dst.parent.readonly || src.node.readonly {
		return experimentalsys.EROFS
	}
	if errno := f.chargeFile(); errno != 0 {
		return errno
	}
	f.usedFiles-- // a name, not a new inode: only checked against the quota
	dst.parent.children[strings.Clone(dst.name)] = src.node
	src.node.nlink++
	touch(dst.parent)
	return 0
}

// Symlink implements experimentalsys.FS. The target is stored as given and resolved within this tree.
func (f *FS) Symlink(oldPath, linkName string) experimentalsys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.IndexByte(oldPath, 0) >= 0 || len(oldPath) > 4096 {
		return experimentalsys.EINVAL
	}
	l, errno := f.resolve(linkName, false)
	if errno != 0 {
		return errno
	}
	if l.node != nil || l.parent == nil {
		return experimentalsys.EEXIST
	}
	if l.parent.readonly {
		return experimentalsys.EROFS
	}
	if errno := f.chargeFile(); errno != 0 {
		return errno
	}
	n := newNode(fs.ModeSymlink | 0o777)
	// wazero may hand us strings that alias guest memory: keep copies of what we store.
	n.target = strings.Clone(oldPath)
	l.parent.children[strings.Clone(l.name)] = n
	touch(l.parent)
	return 0
}

// Readlink implements experimentalsys.FS.
func (f *FS) Readlink(path string) (string, experimentalsys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, errno := f.resolve(path, false)
	if errno != 0 {
		return "", errno
	}
	if l.node == nil {
		return "", experimentalsys.ENOENT
	}
	if !l.node.isSymlink() {
		return "", experimentalsys.EINVAL
	}
	return l.node.target, 0
}

// Utimens implements experimentalsys.FS.
func (f *FS) Utimens(path string, atim, mtim int64) experimentalsys.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, errno := f.resolve(path, true)
	if errno != 0 {
		return errno
	}
	if l.node == nil {
		return experimentalsys.ENOENT
	}
	return setTimes(l.node, atim, mtim)
}

func setTimes(n *node, atim, mtim int64) experimentalsys.Errno {
	if n.readonly {
		return experimentalsys.EROFS
	}
	// wazero has already turned UTIME_NOW into the current time.
	if atim != experimentalsys.UTIME_OMIT {
		n.atim = atim
	}
	if mtim != experimentalsys.UTIME_OMIT {
		n.mtim = mtim
	}
	n.ctim = time.Now().UnixNano()
	return 0
}

// sortedDirents lists a directory's entries in name order, so listings are stable.
func sortedDirents(n *node) []experimentalsys.Dirent {
	out := make([]experimentalsys.Dirent, 0, len(n.children))
	for name, c := range n.children {
		out = append(out, experimentalsys.Dirent{Ino: c.ino, Name: name, Type: c.mode.Type()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
