package feed

import (
	"bufio"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWriterDeliversInOrderAndCloses(t *testing.T) {
	cases := []struct {
		name    string
		writers int
		each    int
	}{
		{"one producer", 1, 500},
		{"four producers at once", 4, 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			f := Start(rec, 0, nil)
			var wg sync.WaitGroup
			for p := range c.writers {
				wg.Go(func() {
					for i := range c.each {
						f.Write(fmt.Appendf(nil, "%d:%d\n", p, i))
					}
				})
			}
			wg.Wait()
			f.Close([]byte("end\n"))
			lines := strings.Split(strings.TrimSuffix(rec.Body.String(), "\n"), "\n")
			if len(lines) != c.writers*c.each+1 || lines[len(lines)-1] != "end" {
				t.Fatalf("got %d lines, last %q; want %d and end", len(lines), lines[len(lines)-1], c.writers*c.each+1)
			}
			next := make([]int, c.writers)
			for _, l := range lines[:len(lines)-1] {
				var p, i int
				if _, err := fmt.Sscanf(l, "%d:%d", &p, &i); err != nil || i != next[p] {
					t.Fatalf("line %q out of order (want %d:%d): %v", l, p, next[p], err)
				}
				next[p]++
			}
			if rec.Code != http.StatusOK || rec.Header().Get("Cache-Control") != "no-cache" {
				t.Fatalf("status %d, headers %v", rec.Code, rec.Header())
			}
		})
	}
}

func TestWriterPingsWhileIdle(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := Start(w, 20*time.Millisecond, []byte("ping\n"))
		<-release
		f.Close([]byte("end\n"))
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for range 3 { // three pings arrive with nothing else written
		if !sc.Scan() || sc.Text() != "ping" {
			t.Fatalf("want a ping, got %q (%v)", sc.Text(), sc.Err())
		}
	}
	close(release)
	for sc.Scan() {
		if sc.Text() == "end" {
			return
		}
	}
	t.Fatalf("the last line never came: %v", sc.Err())
}

func TestCloseReturnsWhenTheClientIsGone(t *testing.T) {
	closed := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := Start(w, 0, nil)
		<-r.Context().Done()       // the client hung up
		big := make([]byte, 1<<20) // more than the socket buffers take: the write fails
		for range 8 {
			f.Write(big)
		}
		f.Close(nil)
		close(closed)
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close blocked on a client that had gone")
	}
}
