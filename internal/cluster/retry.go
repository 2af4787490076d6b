package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// What stalls after a node dies (measured, docs/cluster.md): every
// JetStream group (the meta group, each stream) whose leader was on that
// node has no leader until a follower's election timer fires, 4 to 9 s
// after the leader's last heartbeat in nats-server's raft. Meanwhile a
// publish to the stream is never acknowledged and a consumer placed on the
// dead node delivers nothing, and no call fails by itself before its own
// timeout. So every call to the shared state is made in short attempts,
// retried until a longer bound that outlasts an election.
const (
	// stepTimeout bounds one KV call or one object's metadata call.
	stepTimeout = 2 * time.Second
	// quorumWait bounds one change of the shared state, all its attempts:
	// past the longest election (9 s) and a campaign, so that a change
	// made right after a node's death goes through.
	quorumWait = 20 * time.Second
	// retryPause is the first pause between attempts; it doubles up to
	// retryPauseMax.
	retryPause    = 100 * time.Millisecond
	retryPauseMax = time.Second
)

// definitive reports whether err is an answer from the shared state
// rather than a failure to get one: those are not retried.
func definitive(err error) bool {
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyExists),
		errors.Is(err, jetstream.ErrObjectNotFound), errors.Is(err, jetstream.ErrDigestMismatch),
		errors.Is(err, jetstream.ErrBadObjectMeta), errors.Is(err, jetstream.ErrKeyDeleted),
		errors.Is(err, jetstream.ErrInvalidKey), errors.Is(err, errMinority), errors.Is(err, errLocal),
		isWrongSequence(err):
		return true
	}
	return false
}

// errMinority: this node reaches fewer servers than a quorum. It is an
// ErrUnavailable, found without waiting for a timeout.
var errMinority = errors.New("minority")

// retry runs op in attempts of at most step each until it succeeds, fails
// with a definitive error, or ctx ends. Every failed attempt is logged
// with what it waited for and how long: that log is how a stall is told
// from a slow step.
func (n *Node) retry(ctx context.Context, what string, step time.Duration, op func(ctx context.Context) error) error {
	pause := retryPause
	start := time.Now()
	for attempt := 1; ; attempt++ {
		if err := n.quorumReachable(); err != nil {
			return err
		}
		actx, cancel := context.WithTimeout(ctx, step)
		t0 := time.Now()
		err := op(actx)
		cancel()
		if err == nil {
			if attempt > 1 {
				n.log.Info("shared state answered again", "step", what, "attempts", attempt, "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if definitive(err) || ctx.Err() != nil {
			return err
		}
		n.log.Info("shared state did not answer; retrying", "step", what, "attempt", attempt,
			"waited", time.Since(t0).Round(time.Millisecond), "err", err)
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			return err
		case <-n.stop:
			return fmt.Errorf("%w: node is stopping", ErrUnavailable)
		}
		pause = min(2*pause, retryPauseMax)
	}
}

// servers is how many NATS servers the cluster has, as configured (0:
// unknown, with an external cluster).
func (n *Node) servers() int {
	if n.srv == nil {
		return 0
	}
	return 1 + len(n.cfg.Peers)
}

// quorumReachable refuses at once, without waiting for a timeout, a call
// that cannot reach a majority of the embedded cluster's servers: the
// routes to the others are down (a killed peer at once, a stopped or
// partitioned one after three missed route pings).
func (n *Node) quorumReachable() error {
	total := n.servers()
	if total <= 1 {
		return nil
	}
	up := n.reachable()
	if need := total/2 + 1; up < need {
		return fmt.Errorf("%w: %w: node %s reaches %d of the cluster's %d servers (itself included); the shared state needs a quorum of %d",
			ErrUnavailable, errMinority, n.cfg.Name, up, total, need)
	}
	return nil
}

// reachable counts the servers this node's embedded server has a route
// to, itself included. Routes are pooled (several connections per peer),
// so peers are counted by name.
func (n *Node) reachable() int {
	if n.srv == nil {
		return 0
	}
	rz, err := n.srv.Routez(&server.RoutezOptions{})
	if err != nil {
		return 0
	}
	peers := map[string]bool{}
	for _, r := range rz.Routes {
		peers[r.RemoteName] = true
	}
	return 1 + len(peers)
}

// unavailable turns a failure to reach the shared state into
// ErrUnavailable with what the user should know.
func (n *Node) unavailable(op string, err error) error {
	if errors.Is(err, ErrUnavailable) {
		return fmt.Errorf("%s: %w (it refuses changes rather than diverge)", op, err)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrDisconnected) {
		return fmt.Errorf("%w: %s: node %s could not reach a quorum of the cluster's shared state within %v "+
			"(a minority partition, or most nodes down); it refuses changes rather than diverge, "+
			"and if the change got through anyway `dust app` will show it once the cluster is whole: %v",
			ErrUnavailable, op, n.cfg.Name, quorumWait, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, op, err)
}
