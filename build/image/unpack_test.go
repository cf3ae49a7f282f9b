package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
)

// archive is an image archive opened the way an OCI runtime's tooling reads it: the layout's
// index.json, the manifest it names, the config and layers the manifest names, each blob checked
// against its digest and size. The tests read what build wrote only through it.
type archive struct {
	f        *os.File
	blobs    map[string]blobAt // by digest
	files    map[string][]byte // the small top-level files: oci-layout, index.json, manifest.json
	index    Index
	manifest Manifest
	config   ImageConfig
}

type blobAt struct{ off, size int64 }

func openArchive(t testing.TB, p string) *archive {
	t.Helper()
	a, err := readArchive(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.f.Close() })
	return a
}

func readArchive(p string) (*archive, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	a := &archive{f: f, blobs: map[string]blobAt{}, files: map[string][]byte{}}
	// tar.Reader reads headers straight from the file, so after Next the file's offset is where
	// the entry's content starts: blobs are read in place, not copied out.
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return nil, err
		}
		switch {
		case strings.HasPrefix(hdr.Name, "blobs/sha256/") && hdr.Typeflag == tar.TypeReg:
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				f.Close()
				return nil, err
			}
			a.blobs["sha256:"+strings.TrimPrefix(hdr.Name, "blobs/sha256/")] = blobAt{off, hdr.Size}
		case hdr.Typeflag == tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				f.Close()
				return nil, err
			}
			a.files[hdr.Name] = b
		}
	}
	if err := a.decode(); err != nil {
		f.Close()
		return nil, err
	}
	return a, nil
}

func (a *archive) decode() error {
	if string(a.files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		return fmt.Errorf("oci-layout is %q", a.files["oci-layout"])
	}
	if err := json.Unmarshal(a.files["index.json"], &a.index); err != nil {
		return fmt.Errorf("index.json: %w", err)
	}
	if len(a.index.Manifests) != 1 {
		return fmt.Errorf("index.json names %d manifests, want 1", len(a.index.Manifests))
	}
	b, err := a.blob(a.index.Manifests[0])
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &a.manifest); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if b, err = a.blob(a.manifest.Config); err != nil {
		return err
	}
	if err := json.Unmarshal(b, &a.config); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if len(a.config.RootFS.DiffIDs) != len(a.manifest.Layers) {
		return fmt.Errorf("%d diff_ids for %d layers", len(a.config.RootFS.DiffIDs), len(a.manifest.Layers))
	}
	return nil
}

// section is a blob's bytes, checked against the descriptor's size (its digest by blob).
func (a *archive) section(d Descriptor) (*io.SectionReader, error) {
	at, ok := a.blobs[d.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s is not in the archive", d.Digest)
	}
	if at.size != d.Size {
		return nil, fmt.Errorf("blob %s: %d bytes, the descriptor says %d", d.Digest, at.size, d.Size)
	}
	return io.NewSectionReader(a.f, at.off, at.size), nil
}

// blob reads a small blob whole and checks its digest.
func (a *archive) blob(d Descriptor) ([]byte, error) {
	r, err := a.section(d)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	h := sha256Writer()
	h.Write(b)
	if got := h.digest(); got != d.Digest {
		return nil, fmt.Errorf("blob %s has digest %s", d.Digest, got)
	}
	return b, nil
}

type hashWriter struct{ hash.Hash }

func sha256Writer() hashWriter { return hashWriter{sha256.New()} }

func (h hashWriter) digest() string { return digestOf(h.Hash) }

// layerTar opens layer i's uncompressed tar.
func (a *archive) layerTar(i int) (*tar.Reader, func() error, error) {
	r, err := a.section(a.manifest.Layers[i])
	if err != nil {
		return nil, nil, err
	}
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, nil, fmt.Errorf("layer %d: %w", i, err)
	}
	return tar.NewReader(zr), zr.Close, nil
}

// unpack applies the layers in order into dir, as a runtime makes a container's root: whiteouts
// remove what lower layers wrote, owners, modes and times are kept, and no entry may write outside
// dir (os.Root refuses paths and symbolic links that leave it). It checks every layer's digest and
// diff_id on the way.
func (a *archive) unpack(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for i := range a.manifest.Layers {
		if err := a.unpackLayer(root, i); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return nil
}

func (a *archive) unpackLayer(root *os.Root, i int) error {
	d := a.manifest.Layers[i]
	sec, err := a.section(d)
	if err != nil {
		return err
	}
	compressed := sha256Writer()
	zr, err := gzip.NewReader(io.TeeReader(sec, compressed))
	if err != nil {
		return err
	}
	uncompressed := sha256Writer()
	tr := tar.NewReader(io.TeeReader(zr, uncompressed))
	type dirTime struct {
		name string
		t    time.Time
	}
	var dirs []dirTime // directory times are set last: writing into a directory changes its time
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		name := path.Clean(hdr.Name)
		if name == "." || strings.HasPrefix(name, "../") || name == ".." || path.IsAbs(name) {
			return fmt.Errorf("entry %q leaves the root", hdr.Name)
		}
		base := path.Base(name)
		if base == ".wh..wh..opq" {
			return fmt.Errorf("entry %q: opaque whiteouts are not used by this image", hdr.Name)
		}
		if strings.HasPrefix(base, ".wh.") {
			if err := root.RemoveAll(path.Join(path.Dir(name), strings.TrimPrefix(base, ".wh."))); err != nil {
				return err
			}
			continue
		}
		mode := fs.FileMode(hdr.Mode).Perm()
		if hdr.Mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if hdr.Mode&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if hdr.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
		if hdr.Typeflag != tar.TypeDir {
			// A lower layer's file of another type gives way, as in an overlay.
			if err := root.RemoveAll(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dirTime{name, hdr.ModTime})
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return err
			}
			if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return err
			}
			continue
		case tar.TypeLink:
			if err := root.Link(path.Clean(hdr.Linkname), name); err != nil {
				return err
			}
			continue
		default:
			return fmt.Errorf("entry %q: type %q is not used by this image", hdr.Name, hdr.Typeflag)
		}
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
		if err := root.Chmod(name, mode); err != nil { // after chown, which clears setuid
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			if err := root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
				return err
			}
		}
	}
	// Reading to the end of the gzip stream checks its CRC and finishes both digests.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, sec); err != nil {
		return err
	}
	if got := compressed.digest(); got != d.Digest {
		return fmt.Errorf("blob digest %s, the manifest says %s", got, d.Digest)
	}
	if got := uncompressed.digest(); got != a.config.RootFS.DiffIDs[i] {
		return fmt.Errorf("diff_id %s, the config says %s", got, a.config.RootFS.DiffIDs[i])
	}
	for j := len(dirs) - 1; j >= 0; j-- {
		if err := root.Chtimes(dirs[j].name, dirs[j].t, dirs[j].t); err != nil {
			return err
		}
	}
	return nil
}
