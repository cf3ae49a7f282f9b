package dlp

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
)

// benchProse is English-like text with a few planted findings per KiB
// budget, like a chat message or a document upload.
func benchProse(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("the quick brown fox jumps over a lazy dog while our team reviews the quarterly report and sends an update to the customer about their order status before friday")
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		b.WriteByte(' ')
		if r.IntN(400) == 0 {
			b.WriteString("contact bob.smith@example.com or 4111 1111 1111 1111. ")
		}
	}
	return b.Bytes()[:n]
}

// benchJSON is an API payload: records with ids, timestamps, hashes and
// words like key/token/api that wake up gitleaks' keyword prefilter.
func benchJSON(n int) []byte {
	r := rand.New(rand.NewPCG(3, 4))
	var b bytes.Buffer
	b.WriteString(`{"items":[`)
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, `{"id":%d,"uuid":"%08x-%04x-4%03x-a%03x-%012x","created":"2024-05-%02dT10:%02d:00Z","api_version":"v2","token_type":"bearer","sha":"%016x%016x","note":"order %d shipped"},`,
			i, r.Uint32(), r.IntN(1<<16), r.IntN(1<<12), r.IntN(1<<12), r.Int64N(1<<48), 1+i%28, i%60, r.Uint64(), r.Uint64(), 100000+i)
	}
	return append(b.Bytes()[:n-2], "]}"...)
}

// BenchmarkScan reports the cost per KiB (b.SetBytes) of Scan on prose and
// JSON at 4 KiB, 64 KiB and the default window, 256 KiB.
func BenchmarkScan(b *testing.B) {
	e := testEngine(b)
	for _, c := range []struct {
		name string
		gen  func(int) []byte
	}{{"prose", benchProse}, {"json", benchJSON}} {
		for _, size := range []int{4 << 10, 64 << 10, 256 << 10} {
			text := c.gen(size)
			b.Run(fmt.Sprintf("%s/%dKiB", c.name, size>>10), func(b *testing.B) {
				b.SetBytes(int64(len(text)))
				for b.Loop() {
					e.Scan(text)
				}
				reportPerKiB(b, len(text))
			})
		}
	}
}

// BenchmarkScanRequestGzip is a gzip'd 64 KiB JSON upload through
// ScanRequest under block (decode, scan, replay) and redact (rewrite).
// reportPerKiB adds the cost per KiB of input, the figure docs/dlp.md quotes.
func reportPerKiB(b *testing.B, n int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/(float64(n)/1024), "ns/KiB")
}

// BenchmarkScanWithoutGenericRule shows what gitleaks' generic-api-key
// rule costs on keyword-dense JSON (Config.DisableRules).
func BenchmarkScanWithoutGenericRule(b *testing.B) {
	e, err := New(Config{DisableRules: []string{"generic-api-key"}})
	if err != nil {
		b.Fatal(err)
	}
	text := benchJSON(64 << 10)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		e.Scan(text)
	}
	reportPerKiB(b, len(text))
}

func BenchmarkScanRequestGzip(b *testing.B) {
	e := testEngine(b)
	body := encode(b, "gzip", append(benchJSON(64<<10-64), []byte(` "4111 1111 1111 1111"`)...))
	for _, mode := range []Mode{ModeBlock, ModeRedact} {
		b.Run(string(mode), func(b *testing.B) {
			b.SetBytes(64 << 10)
			for b.Loop() {
				r, _ := http.NewRequest(http.MethodPost, "http://api.example.com/v1/upload?x=1", bytes.NewReader(body))
				r.Header.Set("Content-Encoding", "gzip")
				r.Header.Set("Content-Type", "application/json")
				if _, err := e.ScanRequest(r, mode); err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, r.Body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkNew(b *testing.B) {
	for b.Loop() {
		if _, err := New(Config{}); err != nil {
			b.Fatal(err)
		}
	}
}
