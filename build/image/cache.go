package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// The heavy root filesystem's layer is 1.6 GB to read and 0.5 GB to compress, and it is the same
// every build: build/heavy/build.sh makes each root filesystem once, in a new directory named by its
// key, and never changes a finished one. With -layer-cache, a layer that is only a tree is kept
// there under a key naming the tree's identity (its real path, its and its completion marker's
// times), and the next build copies the blob instead of walking the tree. The cache trusts that
// identity: a tree changed in place keeps the stale layer (remove the cache directory then).

// cacheFormat changes whenever writeLayer's output for the same tree would.
const cacheFormat = "image-layer-1"

// treeKey names a tree-only layer in the cache; "" when the layer is not one, or its tree has no
// identity to trust.
func treeKey(spec layerSpec) string {
	if len(spec.entries) > 0 || len(spec.trees) != 1 {
		return ""
	}
	t := spec.trees[0]
	dir, err := filepath.EvalSymlinks(t.dir)
	if err != nil {
		return ""
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%d\x00", cacheFormat, dir, t.prefix, fi.ModTime().UnixNano())
	// build/heavy/build.sh's completion marker, written last, once.
	if m, err := os.Stat(filepath.Join(dir, ".agentbox-complete")); err == nil {
		fmt.Fprintf(h, "%d\x00%d", m.ModTime().UnixNano(), m.Size())
	}
	return hex.EncodeToString(h.Sum(nil))[:24]
}

// cachedLayer is what the cache keeps beside a blob.
type cachedLayer struct {
	Digest  string   `json:"digest"`
	DiffID  string   `json:"diff_id"`
	Size    int64    `json:"size"`
	Skipped []string `json:"skipped,omitempty"`
}

// writeLayerCached is writeLayer through the cache in cacheDir (empty: no cache).
func writeLayerCached(work, cacheDir string, spec layerSpec, mtime time.Time) (*layerBlob, bool, error) {
	key := treeKey(spec)
	if cacheDir == "" || key == "" {
		l, err := writeLayer(work, spec, mtime)
		return l, false, err
	}
	blobFile, metaFile := filepath.Join(cacheDir, key+".tar.gz"), filepath.Join(cacheDir, key+".json")
	if b, err := os.ReadFile(metaFile); err == nil {
		var c cachedLayer
		if json.Unmarshal(b, &c) == nil {
			if fi, err := os.Stat(blobFile); err == nil && fi.Size() == c.Size {
				return &layerBlob{file: blobFile, digest: c.Digest, diffID: c.DiffID, size: c.Size, skipped: c.Skipped}, true, nil
			}
		}
	}
	l, err := writeLayer(work, spec, mtime)
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, false, fmt.Errorf("-layer-cache: %w", err)
	}
	meta, _ := json.Marshal(cachedLayer{Digest: l.digest, DiffID: l.diffID, Size: l.size, Skipped: l.skipped})
	// The blob first, the metadata last: a build stopped between them leaves no entry that is used.
	os.Remove(blobFile + ".tmp")
	if err := os.Link(l.file, blobFile+".tmp"); err != nil && copyFile(l.file, blobFile+".tmp") != nil {
		return nil, false, fmt.Errorf("-layer-cache: %w", err)
	}
	if err := os.Rename(blobFile+".tmp", blobFile); err != nil {
		return nil, false, fmt.Errorf("-layer-cache: %w", err)
	}
	if err := os.WriteFile(metaFile+".tmp", meta, 0o644); err != nil {
		return nil, false, fmt.Errorf("-layer-cache: %w", err)
	}
	if err := os.Rename(metaFile+".tmp", metaFile); err != nil {
		return nil, false, fmt.Errorf("-layer-cache: %w", err)
	}
	return l, false, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
