package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/entersandbox/agentbox/api"
)

// AuditStream is the JetStream stream with every host's audit events, on agentbox.audit.<host>.
const AuditStream = "AGENTBOX_AUDIT"

// auditBacklog caps the events an AuditSink keeps before it is attached (the server's start).
const auditBacklog = 1024

// AuditSink is an audit.Sink that publishes each committed event into AuditStream, so that the
// fleet's events are in one place (each host's own log stays the signed record it searches). The
// audit log opens before the host joins the fleet: events until Attach are kept (up to 1024) and
// published then.
type AuditSink struct {
	mu      sync.Mutex
	js      jetstream.JetStream // guarded by mu; nil until Attach
	subject string              // guarded by mu
	backlog [][]byte            // guarded by mu
	dropped int                 // guarded by mu
}

// NewAuditSink returns a sink to attach to a Node once it has joined.
func NewAuditSink() *AuditSink { return &AuditSink{} }

// Name is the sink's name in logs.
func (s *AuditSink) Name() string { return "jetstream:" + AuditStream }

// Write publishes ev (asynchronously: the audit log's commit does not wait for NATS).
func (s *AuditSink) Write(ev api.AuditEvent) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("cluster: audit event: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.js == nil {
		if len(s.backlog) >= auditBacklog {
			s.dropped++
			return nil
		}
		s.backlog = append(s.backlog, b)
		return nil
	}
	if _, err := s.js.PublishAsync(s.subject, b); err != nil {
		return fmt.Errorf("cluster: publishing an audit event: %w", err)
	}
	return nil
}

// Attach creates the stream (if this is the first host) and publishes the backlog, then every event.
func (s *AuditSink) Attach(ctx context.Context, n *Node) error {
	js, err := jetstream.New(n.nc)
	if err != nil {
		return fmt.Errorf("cluster: audit stream: %w", err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: AuditStream, Subjects: []string{"agentbox.audit.>"},
		Storage: jetstream.FileStorage, Replicas: n.cfg.Replicas, MaxAge: 90 * 24 * time.Hour,
		Description: "every agentbox host's audit events, by host"}); err != nil {
		return fmt.Errorf("cluster: audit stream: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.js, s.subject = js, "agentbox.audit."+n.cfg.HostID
	for _, b := range s.backlog {
		if _, err := js.PublishAsync(s.subject, b); err != nil {
			return fmt.Errorf("cluster: publishing an audit event: %w", err)
		}
	}
	if s.dropped > 0 {
		n.log.Warn("cluster: audit events before joining the fleet were not published", "dropped", s.dropped)
	}
	s.backlog, s.dropped = nil, 0
	return nil
}
