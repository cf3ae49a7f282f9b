package cluster

import (
	"context"
	"time"
)

// PauseHeartbeats holds this host's heartbeat puts back (true) or lets them go on (false), as on a
// host whose heartbeats are late: its record expires in the others' view while it still serves.
func (n *Node) PauseHeartbeats(paused bool) { n.beatsPaused.Store(paused) }

// GetSessionRecord reads session id's record as routing does (GetLeader: from the bucket's leader).
func (n *Node) GetSessionRecord(id string, leader bool) ([]byte, uint64, error) {
	ctx, cancel := testContext()
	defer cancel()
	if leader {
		e, err := n.getLeader(ctx, SessionsBucket, id)
		if err != nil {
			return nil, 0, err
		}
		return e.Value(), e.Revision(), nil
	}
	e, err := n.getSession(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	return e.Value(), e.Revision(), nil
}

func testContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// ForgetRecord deletes session id's record if it names this host (as a session's end does).
func (n *Node) ForgetRecord(id string) error {
	ctx, cancel := testContext()
	defer cancel()
	return n.forgetRecord(ctx, id)
}
