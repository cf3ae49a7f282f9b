package e2b

import (
	"compress/gzip"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/internal/dispatch"
	"github.com/entersandbox/agentbox/internal/e2b/envd/filesystem/filesystemconnect"
	"github.com/entersandbox/agentbox/internal/e2b/envd/process/processconnect"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

func (h *Handler) envdRoutes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { h.health(w, r, http.StatusNoContent) })
	mux.HandleFunc("GET /files", h.readFile)
	mux.HandleFunc("POST /files", h.writeFiles)
	fsPath, fsHandler := filesystemconnect.NewFilesystemHandler(&filesystemService{h: h})
	mux.Handle(fsPath, fsHandler)
	procPath, procHandler := processconnect.NewProcessHandler(&processService{h: h})
	mux.Handle(procPath, procHandler)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, errdefs.With(errdefs.NotFound, fmt.Errorf("no envd route for %s %s", r.Method, limits.Text(r.URL.Path, 256))))
	})
	return mux
}

// sandboxPath resolves an E2B path: relative paths are under the user's home, as in E2B.
func sandboxPath(p string) (string, error) {
	if p == "" {
		return "", errdefs.With(errdefs.InvalidArgument, errors.New("path is required"))
	}
	if !strings.HasPrefix(p, "/") {
		p = homeDir + "/" + p
	}
	p = path.Clean(p)
	if err := limits.CheckPath(p); err != nil {
		return "", err
	}
	return p, nil
}

// entryJSON is envd's answer to an upload.
type entryJSON struct {
	Path string `json:"path"`
	Name string `json:"name"`
	Type string `json:"type"`
}

func (h *Handler) readFile(w http.ResponseWriter, r *http.Request) {
	h.serveRead(w, r, sandboxOf(r.Context()))
}

func (h *Handler) serveRead(w http.ResponseWriter, r *http.Request, b *sandbox) {
	p, err := sandboxPath(r.URL.Query().Get("path"))
	if err != nil {
		h.fail(w, err)
		return
	}
	data, err := b.sess.ReadFile(r.Context(), p, h.cfg.MaxFileBytes)
	if err != nil {
		h.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(p)}))
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Write(data)
}

func (h *Handler) writeFiles(w http.ResponseWriter, r *http.Request) {
	h.serveWrite(w, r, sandboxOf(r.Context()))
}

// serveWrite is POST /files: a multipart/form-data body with one part per file (each named by its
// filename, or by the path parameter), or an application/octet-stream body for the path parameter,
// gzip-encoded or not. Nothing is written unless every part was read.
func (h *Handler) serveWrite(w http.ResponseWriter, r *http.Request, b *sandbox) {
	type file struct {
		path string
		data []byte
	}
	var files []file
	query := r.URL.Query().Get("path")
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil && r.Header.Get("Content-Type") != "" {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("content type: %w", err)))
		return
	}
	body := io.Reader(r.Body)
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("gzip body: %w", err)))
			return
		}
		defer zr.Close()
		body = zr
	}
	switch mt {
	case "multipart/form-data":
		r.Body = io.NopCloser(body)
		mr, err := r.MultipartReader()
		if err != nil || params["boundary"] == "" {
			h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("multipart body: %v", err)))
			return
		}
		for {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				h.fail(w, readErr("multipart body", err))
				return
			}
			if part.FormName() != "file" {
				part.Close()
				continue
			}
			name := partFileName(part)
			if query != "" && (name == "" || path.Base(name) == name) {
				name = query // one file for the path parameter (older SDKs name the part by its base name)
			}
			p, err := sandboxPath(name)
			if err != nil {
				h.fail(w, err)
				return
			}
			data, err := io.ReadAll(part)
			if err != nil {
				h.fail(w, readErr("multipart part "+p, err))
				return
			}
			files = append(files, file{p, data})
		}
	case "application/octet-stream", "":
		p, err := sandboxPath(query)
		if err != nil {
			h.fail(w, err)
			return
		}
		data, err := io.ReadAll(body)
		if err != nil {
			h.fail(w, readErr("body", err))
			return
		}
		files = append(files, file{p, data})
	default:
		h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("content type %q: send multipart/form-data with file parts, or application/octet-stream", limits.Text(mt, 128))))
		return
	}
	if len(files) == 0 {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, errors.New(`the multipart body has no "file" part`)))
		return
	}
	out := make([]entryJSON, 0, len(files))
	for _, f := range files {
		if err := b.sess.WriteFile(r.Context(), f.path, f.data); err != nil {
			h.fail(w, err)
			return
		}
		out = append(out, entryJSON{Path: f.path, Name: path.Base(f.path), Type: "file"})
	}
	writeJSON(w, http.StatusOK, out)
}

// partFileName is a part's filename as sent: the SDKs put the file's whole path there, which
// multipart.Part.FileName would cut to its base name.
func partFileName(part *multipart.Part) string {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}

func readErr(what string, err error) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return errdefs.With(errdefs.TooLarge, fmt.Errorf("%s: larger than %d bytes", what, tooBig.Limit))
	}
	return errdefs.With(errdefs.InvalidArgument, fmt.Errorf("reading the %s: %w", what, err))
}

// signedFiles serves the SDK's downloadUrl/uploadUrl URLs, which are built as /files at the host's
// root (dropping E2B_SANDBOX_URL's path) and carry no routing headers: the signature names the
// sandbox, since only its envdAccessToken makes it. Every sandbox's token is tried.
func (h *Handler) signedFiles(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	op := "read"
	if r.Method == http.MethodPost {
		op = "write"
	} else if r.Method != http.MethodGet {
		h.fail(w, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("%s /files: want GET or POST", limits.Text(r.Method, 16))))
		return
	}
	sig := q.Get("signature")
	if sig == "" {
		h.fail(w, errdefs.With(errdefs.Unauthenticated, fmt.Errorf("/files without E2B_SANDBOX_URL's prefix is served only for signed URLs (downloadUrl, uploadUrl); other requests go to %s/files with the E2b-Sandbox-Id header", SandboxPrefix)))
		return
	}
	exp := q.Get("signature_expiration")
	if exp != "" {
		n, err := strconv.ParseInt(exp, 10, 64)
		if err != nil || time.Now().Unix() > n {
			h.fail(w, errdefs.With(errdefs.Unauthenticated, errors.New("the signed URL has expired")))
			return
		}
	}
	h.mu.Lock()
	all := make([]*sandbox, 0, len(h.boxes))
	for _, b := range h.boxes {
		all = append(all, b)
	}
	h.mu.Unlock()
	var found *sandbox
	for _, b := range all {
		if subtle.ConstantTimeCompare([]byte(sig), []byte(signature(q.Get("path"), op, q.Get("username"), b.token, exp))) == 1 {
			found = b
		}
	}
	if found == nil {
		h.fail(w, errdefs.With(errdefs.Unauthenticated, errors.New("the signature matches no sandbox (a wrong path, operation or user, or a killed sandbox)")))
		return
	}
	r = r.WithContext(dispatch.WithTenant(r.Context(), found.tenant))
	if op == "read" {
		h.serveRead(w, r, found)
		return
	}
	h.serveWrite(w, r, found)
}

// signature is envd's file URL signature: v1_ and the unpadded base64 of the sha256 of
// path:operation:user:token, with :expiration when the URL expires.
func signature(p, op, user, token, exp string) string {
	raw := p + ":" + op + ":" + user + ":" + token
	if exp != "" {
		raw += ":" + exp
	}
	sum := sha256.Sum256([]byte(raw))
	return "v1_" + base64.RawStdEncoding.EncodeToString(sum[:])
}
