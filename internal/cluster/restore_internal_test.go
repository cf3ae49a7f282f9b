package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/entersandbox/agentbox/internal/tier"
)

// fakeBatch is one fetch's answer: its messages, then its error.
type fakeBatch struct {
	msgs []jetstream.Msg
	err  error
}

func (b fakeBatch) Messages() <-chan jetstream.Msg {
	ch := make(chan jetstream.Msg, len(b.msgs))
	for _, m := range b.msgs {
		ch <- m
	}
	close(ch)
	return ch
}

func (b fakeBatch) Error() error { return b.err }

// fakeMsg is a block message; the methods readBlocks does not call are the nil interface's.
type fakeMsg struct {
	jetstream.Msg
	subject string
	data    []byte
}

func (m fakeMsg) Subject() string { return m.subject }
func (m fakeMsg) Data() []byte    { return m.data }
func (m fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumPending: 0}, nil
}

// TestReadBlocksAsksAgainWhenNoConsumerAnswered: a fetch that reached no consumer ("no responders",
// nothing delivered) is asked again, a bounded number of times; any other failure, or one after a
// delivery, ends the read.
func TestReadBlocksAsksAgainWhenNoConsumerAnswered(t *testing.T) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	n := &Node{repl: &replicator{dec: dec}}
	plain := []byte("a block's bytes")
	sum := sha256.Sum256(plain)
	const prefix = blocksSubject + ".ses_x."
	block := fakeMsg{subject: prefix + hex.EncodeToString(sum[:]), data: enc.EncodeAll(plain, nil)}
	noConsumer := fakeBatch{err: nats.ErrNoResponders}
	other := errors.New("stream gone")
	cases := []struct {
		name    string
		answers []fakeBatch // the last one repeats
		fetches int
		err     error // nil: the block is read
	}{
		{"no responders, then the block", []fakeBatch{noConsumer, noConsumer, {msgs: []jetstream.Msg{block}}}, 3, nil},
		{"no responders every time", []fakeBatch{noConsumer}, fetchUnansweredTries + 1, nats.ErrNoResponders},
		{"no responders after a delivery", []fakeBatch{{msgs: []jetstream.Msg{block}, err: nats.ErrNoResponders}}, 1, nats.ErrNoResponders},
		{"another error", []fakeBatch{{err: other}}, 1, other},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fetches := 0
			fetch := func(int) (jetstream.MessageBatch, error) {
				b := c.answers[min(fetches, len(c.answers)-1)]
				fetches++
				return b, nil
			}
			h := &head{Session: "ses_x", IDs: []tier.BlockID{7}}
			want := map[[32]byte][]int{sum: {0}}
			out := newImportedBlocks(1)
			err := n.readBlocks(context.Background(), fetch, prefix, h, want, out)
			if !errors.Is(err, c.err) || (c.err == nil && err != nil) || fetches != c.fetches {
				t.Fatalf("err %v after %d fetches, want %v after %d", err, fetches, c.err, c.fetches)
			}
			if c.err == nil && string(out.data[7]) != string(plain) {
				t.Fatalf("block 7 is %q", out.data[7])
			}
		})
	}
	t.Run("ctx ends the wait between fetches", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		fetch := func(int) (jetstream.MessageBatch, error) { cancel(); return noConsumer, nil }
		err := n.readBlocks(ctx, fetch, prefix, &head{Session: "ses_x", IDs: []tier.BlockID{7}}, map[[32]byte][]int{sum: {0}}, newImportedBlocks(1))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v", err)
		}
	})
}
