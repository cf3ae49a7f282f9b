package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/entersandbox/agentbox/api"
)

// LoadOrCreateKey reads the signing key at path (hex of a 32-byte ed25519 seed), creating it, mode
// 0600, with its public key beside it (path+".pub", hex) when missing. A key readable by group or
// others is refused.
func LoadOrCreateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		seed := make([]byte, ed25519.SeedSize)
		rand.Read(seed)
		key := ed25519.NewKeyFromSeed(seed)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("audit: creating the signing key: %w", err)
		}
		_, werr := fmt.Fprintf(f, "%s\n", hex.EncodeToString(seed))
		if err := errors.Join(werr, f.Close()); err != nil {
			return nil, fmt.Errorf("audit: writing the signing key: %w", err)
		}
		pub := key.Public().(ed25519.PublicKey)
		if err := os.WriteFile(path+".pub", []byte(hex.EncodeToString(pub)+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("audit: writing the public key: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: reading the signing key: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("audit: signing key %s is mode %v: it must be readable by its owner only (chmod 600)", path, st.Mode().Perm())
	}
	seed, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("audit: signing key %s: want the hex of a %d-byte ed25519 seed", path, ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// ParsePublicKey reads a public key as LoadOrCreateKey writes it (hex), or derives it from a key file's
// seed.
func ParsePublicKey(text string) (ed25519.PublicKey, error) {
	b, err := hex.DecodeString(strings.TrimSpace(text))
	switch {
	case err != nil:
		return nil, fmt.Errorf("audit: public key: want hex: %w", err)
	case len(b) == ed25519.PublicKeySize:
		return ed25519.PublicKey(b), nil
	case len(b) == ed25519.SeedSize:
		return ed25519.NewKeyFromSeed(b).Public().(ed25519.PublicKey), nil
	}
	return nil, fmt.Errorf("audit: public key: want %d bytes of hex, got %d", ed25519.PublicKeySize, len(b))
}

// KeyID names a public key in checkpoints: the first 8 bytes of its sha256, hex.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// checkpointMessage is what a checkpoint signs (docs/audit.md).
func checkpointMessage(seq int64, head []byte, ts int64) []byte {
	return fmt.Appendf(nil, "agentbox-audit-checkpoint/v1\n%d\n%s\n%d\n", seq, hex.EncodeToString(head), ts)
}

func toAPICheckpoint(seq int64, h []byte, ts int64, keyID string, sig []byte) *api.AuditCheckpoint {
	return &api.AuditCheckpoint{Seq: seq, Head: hex.EncodeToString(h), Time: time.Unix(0, ts).UTC().Format(time.RFC3339Nano),
		KeyID: keyID, Signature: hex.EncodeToString(sig)}
}

// Verify checks the whole log against pub (nil means the log's own key): every event's hash over
// its stored bytes and the previous hash, the sequence without gaps or reordering, and every
// checkpoint's signature and head. It names the first bad event.
func (l *Log) Verify(ctx context.Context, pub ed25519.PublicKey) (api.AuditVerification, error) {
	if pub == nil {
		pub = l.PublicKey()
	}
	if pub == nil {
		return api.AuditVerification{}, errors.New("audit: verify needs the public key (--audit-key or --pub)")
	}
	seq, h, err := base(ctx, l.r)
	if err != nil {
		return api.AuditVerification{}, err
	}
	return l.verifyRange(ctx, pub, seq, h, 0)
}

// verifyRange checks the events after fromSeq (whose hash is fromHash), through toSeq (0: the end).
func (l *Log) verifyRange(ctx context.Context, pub ed25519.PublicKey, fromSeq int64, fromHash []byte, toSeq int64) (api.AuditVerification, error) {
	v := api.AuditVerification{FirstSeq: fromSeq + 1}
	bad := func(seq int64, id, problem string) (api.AuditVerification, error) {
		v.OK, v.BadSeq, v.BadEventID, v.Problem = false, seq, id, problem
		return v, nil
	}
	// Checkpoints first: their signatures must hold before their heads are believed.
	cps := map[int64][]byte{}
	var cpSeqs []int64
	end := toSeq
	if end == 0 {
		end = 1<<63 - 1
	}
	rows, err := l.r.QueryContext(ctx, `SELECT seq, head, ts, key_id, sig FROM checkpoints WHERE seq > ? AND seq <= ? ORDER BY seq`, fromSeq, end)
	if err != nil {
		return v, fmt.Errorf("audit: reading checkpoints: %w", err)
	}
	var lastCP *api.AuditCheckpoint
	for rows.Next() {
		var seq, ts int64
		var head, sig []byte
		var keyID string
		if err := rows.Scan(&seq, &head, &ts, &keyID, &sig); err != nil {
			rows.Close()
			return v, fmt.Errorf("audit: reading checkpoints: %w", err)
		}
		if !ed25519.Verify(pub, checkpointMessage(seq, head, ts), sig) {
			rows.Close()
			return bad(seq, "", fmt.Sprintf("the checkpoint at seq %d has a bad signature (key %s; expected key %s)", seq, keyID, KeyID(pub)))
		}
		cps[seq] = head
		cpSeqs = append(cpSeqs, seq)
		lastCP = toAPICheckpoint(seq, head, ts, keyID, sig)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return v, fmt.Errorf("audit: reading checkpoints: %w", err)
	}
	v.Checkpoints, v.LastCheckpoint = len(cpSeqs), lastCP

	rows, err = l.r.QueryContext(ctx, `SELECT seq, body, prev_hash, hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq`, fromSeq, end)
	if err != nil {
		return v, fmt.Errorf("audit: reading events: %w", err)
	}
	defer rows.Close()
	want, prev := fromSeq+1, fromHash
	var body, prevHash, hash []byte
	for rows.Next() {
		if err := ctx.Err(); err != nil {
			return v, err
		}
		var seq int64
		if err := rows.Scan(&seq, &body, &prevHash, &hash); err != nil {
			return v, fmt.Errorf("audit: reading events: %w", err)
		}
		ev, jerr := seqAndID(body)
		switch {
		case seq != want:
			return bad(want, "", fmt.Sprintf("events %d to %d are missing (deleted)", want, seq-1))
		case jerr != nil:
			return bad(seq, "", fmt.Sprintf("event %d: stored bytes are not an event: %v", seq, jerr))
		case ev.Seq != seq:
			return bad(seq, ev.ID, fmt.Sprintf("event %d: its stored bytes say seq %d (moved or reordered)", seq, ev.Seq))
		case !bytes.Equal(prevHash, prev):
			return bad(seq, ev.ID, fmt.Sprintf("event %d: prev_hash does not match the hash of event %d (reordered, or an earlier event was replaced)", seq, seq-1))
		}
		got := chainHash(prev, body)
		if !bytes.Equal(got, hash) {
			return bad(seq, ev.ID, fmt.Sprintf("event %d: its hash does not match its stored bytes (edited)", seq))
		}
		if cp, ok := cps[seq]; ok && !bytes.Equal(cp, got) {
			return bad(seq, ev.ID, fmt.Sprintf("event %d: the chain does not match the signed checkpoint at seq %d (the chain was rewritten)", seq, seq))
		}
		v.Events++
		v.LastSeq = seq
		prev = got
		want = seq + 1
	}
	if err := rows.Err(); err != nil {
		return v, fmt.Errorf("audit: reading events: %w", err)
	}
	if n := len(cpSeqs); n > 0 && cpSeqs[n-1] > v.LastSeq {
		return bad(v.LastSeq+1, "", fmt.Sprintf("events %d to %d are missing: a signed checkpoint covers them (truncated)", v.LastSeq+1, cpSeqs[n-1]))
	}
	if v.LastSeq == 0 {
		v.LastSeq = fromSeq
	}
	v.OK = true
	return v, nil
}

// Checkpoints lists the signed checkpoints, newest first, at most limit (0: 100).
func (l *Log) Checkpoints(ctx context.Context, limit int) ([]api.AuditCheckpoint, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := l.r.QueryContext(ctx, `SELECT seq, head, ts, key_id, sig FROM checkpoints ORDER BY seq DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("audit: reading checkpoints: %w", err)
	}
	defer rows.Close()
	out := []api.AuditCheckpoint{}
	for rows.Next() {
		var seq, ts int64
		var head, sig []byte
		var keyID string
		if err := rows.Scan(&seq, &head, &ts, &keyID, &sig); err != nil {
			return nil, fmt.Errorf("audit: reading checkpoints: %w", err)
		}
		out = append(out, *toAPICheckpoint(seq, head, ts, keyID, sig))
	}
	return out, rows.Err()
}

// checkpointBefore is the newest checkpoint older than t, or the chain's base.
func (l *Log) checkpointBefore(ctx context.Context, t time.Time) (int64, []byte, error) {
	var seq int64
	var h []byte
	err := l.r.QueryRowContext(ctx, `SELECT seq, head FROM checkpoints WHERE ts < ? AND seq > coalesce((SELECT v FROM meta WHERE k='base_seq'), 0) ORDER BY seq DESC LIMIT 1`, t.UnixNano()).Scan(&seq, &h)
	if errors.Is(err, sql.ErrNoRows) {
		return base(ctx, l.r)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("audit: %w", err)
	}
	return seq, h, nil
}

type seqID struct {
	Seq int64  `json:"seq"`
	ID  string `json:"id"`
}

// seqAndID reads an event's seq and id from its stored bytes: from the fixed prefix that stored
// writes ({"schema":1,"seq":N,"id":"..."), without decoding the rest, or failing that as JSON.
func seqAndID(body []byte) (seqID, error) {
	var ev seqID
	rest, ok := bytes.CutPrefix(body, []byte(`{"schema":1,"seq":`))
	if ok {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' && i < 19 {
			ev.Seq = ev.Seq*10 + int64(rest[i]-'0')
			i++
		}
		if id, ok := bytes.CutPrefix(rest[i:], []byte(`,"id":"`)); ok && i > 0 {
			if end := bytes.IndexByte(id, '"'); end > 0 {
				ev.ID = string(id[:end])
				return ev, nil
			}
		}
	}
	ev = seqID{}
	err := json.Unmarshal(body, &ev)
	return ev, err
}
