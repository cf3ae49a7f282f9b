package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
)

// A layer is written deterministically: entries in a fixed order (each directory tree walked in
// lexical order, parents before children), no user or group names, no access or change times, and
// gzip with no name or time in its header. The same inputs therefore give the same bytes, and so the
// same digest, on any machine.

// entry is one file of a layer that the builder makes rather than copies from a tree.
type entry struct {
	name string      // path inside the image, without the leading slash
	mode fs.FileMode // type and permission bits (fs.ModeDir, fs.ModeSymlink, or a regular file)
	data []byte      // a regular file's content
	src  string      // or the file to copy it from (its mode bits are kept, not its time)
	link string      // a symbolic link's target
}

// tree is a directory copied into a layer under prefix, keeping its files' modification times,
// owners and modes: the heavy root filesystem's .pyc files are valid only while their sources keep
// the times they were compiled against, or every import would compile again in the read-only root.
type tree struct {
	dir    string
	prefix string // path inside the image, without the leading slash
}

// layerSpec is one layer: generated entries first, then trees.
type layerSpec struct {
	comment string // the image history's created_by
	entries []entry
	trees   []tree
	// fixedTime, when set, stamps the generated entries instead of the build's time, so that the
	// layer's digest changes only when its files do.
	fixedTime bool
}

// layerBlob is a written layer: its compressed blob in a file, the digests the manifest and the
// config name it by, and what was left out.
type layerBlob struct {
	file    string
	digest  string // sha256:… of the compressed blob
	diffID  string // sha256:… of the uncompressed tar
	size    int64
	skipped []string // device nodes and sockets, which a layer does not carry (see addTree)
}

// writeLayer writes spec as a gzip-compressed tar to a new file in dir. Generated entries and their
// parent directories get the time mtime; copied trees keep theirs (truncated to seconds).
// Generated entries are written in path order, whatever order spec lists them in.
func writeLayer(dir string, spec layerSpec, mtime time.Time) (*layerBlob, error) {
	f, err := os.CreateTemp(dir, "layer-*.tar.gz")
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	defer f.Close()
	compressed, uncompressed := sha256.New(), sha256.New()
	counted := &countingWriter{w: io.MultiWriter(f, compressed)}
	// BestSpeed: the heavy root filesystem is 1.6 GB, and its layer is rebuilt in CI; a higher level
	// costs several times the CPU for a few per cent of size.
	zw, err := gzip.NewWriterLevel(counted, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(io.MultiWriter(zw, uncompressed))
	if spec.fixedTime {
		mtime = time.Unix(0, 0)
	}
	lw := &layerWriter{tw: tw, mtime: mtime.Truncate(time.Second).UTC(), dirs: map[string]bool{}, links: map[fileID]string{}}
	entries := slices.Clone(spec.entries)
	sortEntries(entries)
	for _, e := range entries {
		if err := lw.addEntry(e); err != nil {
			return nil, fmt.Errorf("layer %q: %w", spec.comment, err)
		}
	}
	for _, t := range spec.trees {
		if err := lw.addTree(t); err != nil {
			return nil, fmt.Errorf("layer %q: %w", spec.comment, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer %q: %w", spec.comment, err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("layer %q: %w", spec.comment, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("layer %q: %w", spec.comment, err)
	}
	return &layerBlob{file: f.Name(), digest: digestOf(compressed), diffID: digestOf(uncompressed), size: counted.n, skipped: lw.skipped}, nil
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// fileID names an inode, to write a file's second and later names as hard links.
type fileID struct{ dev, ino uint64 }

type layerWriter struct {
	tw      *tar.Writer
	mtime   time.Time
	dirs    map[string]bool   // directories written so far
	links   map[fileID]string // first name written for an inode with several links
	skipped []string
}

// parents writes the directories above name that are not in the layer yet (root-owned, 0755,
// modified at mtime).
func (lw *layerWriter) parents(name string, mtime time.Time) error {
	dir := path.Dir(name)
	if dir == "." || lw.dirs[dir] {
		return nil
	}
	if err := lw.parents(dir, mtime); err != nil {
		return err
	}
	lw.dirs[dir] = true
	return lw.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: mtime})
}

func (lw *layerWriter) addEntry(e entry) error {
	name := cleanName(e.name)
	if name == "" {
		return fmt.Errorf("entry %q: not a path inside the image", e.name)
	}
	if err := lw.parents(name, lw.mtime); err != nil {
		return err
	}
	hdr := &tar.Header{Name: name, Mode: tarMode(e.mode), ModTime: lw.mtime}
	switch {
	case e.mode.IsDir():
		if lw.dirs[name] {
			return fmt.Errorf("entry %q: directory written twice", e.name)
		}
		lw.dirs[name] = true
		hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		return lw.tw.WriteHeader(hdr)
	case e.mode&fs.ModeSymlink != 0:
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, e.link
		return lw.tw.WriteHeader(hdr)
	case e.src != "":
		f, err := os.Open(e.src)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s: not a regular file", e.src)
		}
		hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeReg, fi.Size(), tarMode(fi.Mode())
		if e.mode.Perm() != 0 {
			hdr.Mode = tarMode(e.mode)
		}
		return lw.copy(hdr, f)
	default:
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(e.data))
		if err := lw.tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := lw.tw.Write(e.data)
		return err
	}
}

func (lw *layerWriter) copy(hdr *tar.Header, r io.Reader) error {
	if err := lw.tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(lw.tw, r)
	if err != nil {
		return fmt.Errorf("%s: %w", hdr.Name, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("%s changed while it was copied (%d bytes, %d expected)", hdr.Name, n, hdr.Size)
	}
	return nil
}

// addTree copies t.dir under t.prefix. Device nodes and sockets are left out and counted: the only
// tree with them is the heavy root filesystem's /dev, which runsc replaces with its own in every
// sandbox, and leaving them out keeps the layer unpackable without CAP_MKNOD.
func (lw *layerWriter) addTree(t tree) error {
	prefix := cleanName(t.prefix)
	if prefix == "" {
		return fmt.Errorf("tree %s: prefix %q is not a path inside the image", t.dir, t.prefix)
	}
	// The directories above the tree take its root's time, not the build's: a layer that is only a
	// tree then changes only when the tree does (the heavy root filesystem's layer is reused from
	// one release to the next).
	root, err := os.Stat(t.dir)
	if err != nil {
		return err
	}
	if !root.IsDir() {
		return fmt.Errorf("%s: not a directory", t.dir)
	}
	if err := lw.parents(prefix, root.ModTime().Truncate(time.Second)); err != nil {
		return err
	}
	return filepath.WalkDir(t.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(t.dir, p)
		if err != nil {
			return err
		}
		name := prefix
		if rel != "." {
			name = prefix + "/" + filepath.ToSlash(rel)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat information", p)
		}
		hdr := &tar.Header{Name: name, Mode: tarMode(fi.Mode()), Uid: int(st.Uid), Gid: int(st.Gid), ModTime: fi.ModTime().Truncate(time.Second)}
		mode := fi.Mode()
		switch {
		case mode.IsDir():
			if lw.dirs[name] {
				return fmt.Errorf("%s: directory %q is already in the layer", p, name)
			}
			lw.dirs[name] = true
			hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
			return lw.tw.WriteHeader(hdr)
		case mode&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			return lw.tw.WriteHeader(hdr)
		case mode&fs.ModeNamedPipe != 0:
			hdr.Typeflag = tar.TypeFifo
			return lw.tw.WriteHeader(hdr)
		case mode&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeSocket) != 0:
			lw.skipped = append(lw.skipped, "/"+name)
			return nil
		case mode.IsRegular():
			id := fileID{uint64(st.Dev), st.Ino}
			if st.Nlink > 1 {
				if first, ok := lw.links[id]; ok {
					hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
					return lw.tw.WriteHeader(hdr)
				}
				lw.links[id] = name
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
			return lw.copy(hdr, f)
		default:
			return fmt.Errorf("%s: unsupported file type %v", p, mode.Type())
		}
	})
}

// tarMode is a tar header's mode: permissions with the setuid, setgid and sticky bits.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// cleanName is a path inside the image without leading or trailing slashes; "" when it leaves the
// image's root or names the root itself.
func cleanName(name string) string {
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return ""
		}
	}
	c := path.Clean("/" + name)
	if c == "/" {
		return ""
	}
	return strings.TrimPrefix(c, "/")
}

// sortEntries orders generated entries by path so a layer does not depend on the order the builder
// listed them in.
func sortEntries(es []entry) {
	sort.SliceStable(es, func(i, j int) bool { return cleanName(es[i].name) < cleanName(es[j].name) })
}
