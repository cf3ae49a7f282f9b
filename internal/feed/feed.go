// Package feed streams an HTTP response that a producer appends to without ever blocking on the
// client: a goroutine writes whatever has queued since its last write, with a write deadline, and
// flushes. A guest printing faster than a client reads coalesces into larger writes instead of
// stalling the run; a client that stops reading for the deadline ends the stream. The server's
// Server-Sent Events and the E2B surface's NDJSON both stream through it.
package feed

import (
	"bytes"
	"net/http"
	"sync"
	"time"
)

// writeDeadline bounds one write to the client.
const writeDeadline = 30 * time.Second

// Writer is one streamed response. Its methods are safe for concurrent use.
type Writer struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	wake chan struct{}
	done chan struct{}

	mu      sync.Mutex
	queue   bytes.Buffer // guarded by mu
	closing bool         // guarded by mu
}

// Start writes w's header with status 200 (the caller sets Content-Type and the other headers
// first) and starts the writing goroutine. When keepalive is positive, ping is written after every
// keepalive without other output, so proxies and clients with idle timeouts keep the stream.
func Start(w http.ResponseWriter, keepalive time.Duration, ping []byte) *Writer {
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no") // nginx would buffer the stream otherwise
	w.WriteHeader(http.StatusOK)
	f := &Writer{w: w, rc: http.NewResponseController(w), wake: make(chan struct{}, 1), done: make(chan struct{})}
	f.rc.Flush()
	go f.pump(keepalive, ping)
	return f
}

// Write queues b for the client; it never blocks on the client.
func (f *Writer) Write(b []byte) {
	f.mu.Lock()
	f.queue.Write(b)
	f.mu.Unlock()
	f.poke()
}

// Close queues last, waits until everything queued has been written (or the client is gone) and
// ends the stream. Nothing may be written after Close.
func (f *Writer) Close(last []byte) {
	f.mu.Lock()
	f.queue.Write(last)
	f.closing = true
	f.mu.Unlock()
	f.poke()
	<-f.done
}

func (f *Writer) poke() {
	select {
	case f.wake <- struct{}{}:
	default: // a wake-up is already pending; it will take this data too
	}
}

func (f *Writer) pump(keepalive time.Duration, ping []byte) {
	defer close(f.done)
	var tick <-chan time.Time
	var timer *time.Timer
	if keepalive > 0 {
		timer = time.NewTimer(keepalive)
		defer timer.Stop()
		tick = timer.C
	}
	for {
		select {
		case <-f.wake:
		case <-tick:
			f.mu.Lock()
			if f.queue.Len() == 0 {
				f.queue.Write(ping)
			}
			f.mu.Unlock()
		}
		f.mu.Lock()
		chunk := bytes.Clone(f.queue.Bytes())
		f.queue.Reset()
		closing := f.closing
		f.mu.Unlock()
		if len(chunk) > 0 {
			f.rc.SetWriteDeadline(time.Now().Add(writeDeadline))
			if _, err := f.w.Write(chunk); err != nil {
				return
			}
			f.rc.Flush()
			if timer != nil {
				timer.Reset(keepalive)
			}
		}
		if closing {
			return
		}
	}
}
