package console

import (
	"compress/gzip"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
)

// serveGzipped serves name from its gzip copy name+".gz" when only that is embedded (the big vendored
// libraries are kept compressed: plotly is 4.7 MiB as text, 1.4 MiB gzipped), as is to a browser that
// accepts gzip and decompressed to one that does not. It reports false when there is no such copy.
func serveGzipped(w http.ResponseWriter, r *http.Request, static fs.FS, name string) bool {
	if name == "" || strings.HasSuffix(name, ".gz") {
		return false
	}
	if _, err := fs.Stat(static, name); err == nil {
		return false // the plain file exists: the file server serves it
	}
	f, err := static.Open(name + ".gz")
	if err != nil {
		return false
	}
	defer f.Close()
	if ct := mime.TypeByExtension(path.Ext(name)); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.Header().Add("Vary", "Accept-Encoding")
	if acceptsGzip(r) {
		w.Header().Set("Content-Encoding", "gzip")
		if st, err := f.Stat(); err == nil {
			http.ServeContent(w, r, name, st.ModTime(), f.(io.ReadSeeker))
			return true
		}
		_, _ = io.Copy(w, f)
		return true
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		http.Error(w, "corrupt embedded file", http.StatusInternalServerError)
		return true
	}
	defer zr.Close()
	if r.Method != http.MethodHead {
		_, _ = io.Copy(w, zr)
	}
	return true
}

// acceptsGzip reports whether the request's Accept-Encoding names gzip without q=0.
func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			q := strings.ReplaceAll(strings.TrimSpace(params), " ", "")
			return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
		}
	}
	return false
}
