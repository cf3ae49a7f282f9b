package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// The archive is one tar that is two formats at once, as `docker save` writes since Docker 25: an
// OCI image layout (oci-layout, index.json, blobs/sha256/…), which podman, skopeo, containerd and
// umoci read, and the classic `docker load` archive, whose manifest.json names the same blobs.

const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *Platform         `json:"platform,omitempty"`
}

// Platform is an index entry's platform.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Manifest is an OCI image manifest.
type Manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Config        Descriptor        `json:"config"`
	Layers        []Descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// Index is an OCI image index (the layout's index.json).
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

// ImageConfig is the OCI image configuration.
type ImageConfig struct {
	Created      string        `json:"created"`
	Architecture string        `json:"architecture"`
	OS           string        `json:"os"`
	Config       RuntimeConfig `json:"config"`
	RootFS       RootFS        `json:"rootfs"`
	History      []History     `json:"history"`
}

// RuntimeConfig is what a runtime starts the container with.
type RuntimeConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	Volumes      map[string]struct{} `json:"Volumes,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
	StopSignal   string              `json:"StopSignal,omitempty"`
}

// RootFS lists the layers' uncompressed digests.
type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// History is one layer's line of `docker history`.
type History struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
	Comment   string `json:"comment,omitempty"`
}

// dockerManifest is one image of a `docker load` archive's manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// blob is one file of the archive's blobs/sha256/.
type blob struct {
	digest string
	size   int64
	data   []byte // or
	file   string
}

func jsonBlob(v any) (blob, []byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return blob{}, nil, err
	}
	sum := sha256.Sum256(b)
	return blob{digest: "sha256:" + hex.EncodeToString(sum[:]), size: int64(len(b)), data: b}, b, nil
}

func blobPath(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

// writeArchive writes the image (its config, its layers in order) as one tar to w, every entry
// stamped with mtime. It returns the manifest's digest, the image's identity in the OCI layout.
func writeArchive(w io.Writer, cfg ImageConfig, layers []*layerBlob, tag string, annotations map[string]string, mtime time.Time) (string, error) {
	cfgBlob, _, err := jsonBlob(cfg)
	if err != nil {
		return "", err
	}
	m := Manifest{SchemaVersion: 2, MediaType: mediaManifest, Annotations: annotations,
		Config: Descriptor{MediaType: mediaConfig, Digest: cfgBlob.digest, Size: cfgBlob.size}}
	dm := dockerManifest{Config: blobPath(cfgBlob.digest), RepoTags: []string{tag}}
	blobs := []blob{cfgBlob}
	for _, l := range layers {
		m.Layers = append(m.Layers, Descriptor{MediaType: mediaLayer, Digest: l.digest, Size: l.size})
		dm.Layers = append(dm.Layers, blobPath(l.digest))
		blobs = append(blobs, blob{digest: l.digest, size: l.size, file: l.file})
	}
	manBlob, _, err := jsonBlob(m)
	if err != nil {
		return "", err
	}
	blobs = append(blobs, manBlob)
	// The ref name is the tag's version, as `docker save` and skopeo write it; containerd and
	// Docker 25+ read the full name from io.containerd.image.name.
	ref := tag[strings.LastIndex(tag, ":")+1:]
	index := Index{SchemaVersion: 2, MediaType: "application/vnd.oci.image.index.v1+json",
		Manifests: []Descriptor{{MediaType: mediaManifest, Digest: manBlob.digest, Size: manBlob.size,
			Annotations: map[string]string{"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": dockerName(tag)},
			Platform:    &Platform{Architecture: cfg.Architecture, OS: cfg.OS}}}}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return "", err
	}
	dockerJSON, err := json.Marshal([]dockerManifest{dm})
	if err != nil {
		return "", err
	}
	tw := tar.NewWriter(w)
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: mtime})
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return "", err
	}
	if err := file("index.json", indexJSON); err != nil {
		return "", err
	}
	if err := file("manifest.json", dockerJSON); err != nil {
		return "", err
	}
	if err := dir("blobs/"); err != nil {
		return "", err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return "", err
	}
	written := map[string]bool{}
	for _, b := range blobs {
		if written[b.digest] { // two identical layers are one blob
			continue
		}
		written[b.digest] = true
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: blobPath(b.digest), Mode: 0o644, Size: b.size, ModTime: mtime}); err != nil {
			return "", err
		}
		if b.file == "" {
			if _, err := tw.Write(b.data); err != nil {
				return "", err
			}
			continue
		}
		f, err := os.Open(b.file)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("blob %s: %w", b.digest, err)
		}
	}
	return manBlob.digest, tw.Close()
}

// dockerName is the fully qualified name Docker gives a short one (agentbox:1.0 is
// docker.io/library/agentbox:1.0).
func dockerName(tag string) string {
	name := tag[:strings.LastIndex(tag, ":")]
	first, _, hasSlash := strings.Cut(name, "/")
	switch {
	case !hasSlash:
		return "docker.io/library/" + tag
	case strings.ContainsAny(first, ".:") || first == "localhost":
		return tag
	default:
		return "docker.io/" + tag
	}
}
