package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/dust-run/dust/internal/store"
)

// NodeStatus is one node as its heartbeat describes it.
type NodeStatus struct {
	Name      string         `json:"name"`
	AppURL    string         `json:"app_url,omitempty"`
	AdminURL  string         `json:"admin_url,omitempty"`
	Version   string         `json:"version,omitempty"`
	Live      int            `json:"live_machines"`
	MaxLive   int            `json:"max_live"`
	Ready     map[string]int `json:"ready"` // app -> version live on the node
	Serving   int            `json:"forwarded_in_flight"`
	StartedAt time.Time      `json:"started_at"`
	SeenAt    time.Time      `json:"seen_at"`
	Self      bool           `json:"self,omitempty"`
}

// Status is the cluster as one node sees it.
type Status struct {
	Node     string `json:"node"`
	Mode     string `json:"mode"` // "embedded" or "external"
	Replicas int    `json:"replicas"`
	// Synced: this node has applied the whole apps bucket at least once.
	Synced bool `json:"synced"`
	// Connected: the NATS connection is up; StateError says why the
	// shared state did not answer, if it did not.
	Connected  bool         `json:"connected"`
	StateError string       `json:"state_error,omitempty"`
	Nodes      []NodeStatus `json:"nodes"`
	// Apps is each app's current version in the shared state, as this
	// node's watch last saw it: a node whose Ready differs is behind (or
	// cannot prepare it).
	Apps map[string]int `json:"apps"`
}

func (n *Node) self() NodeStatus {
	n.mu.Lock()
	local := n.local
	n.mu.Unlock()
	st := NodeStatus{Name: n.cfg.Name, AppURL: n.cfg.AppURL, AdminURL: n.cfg.AdminURL, Version: n.cfg.Version,
		StartedAt: n.started.UTC(), SeenAt: time.Now().UTC(), Ready: map[string]int{}, Serving: int(n.servingN.Load())}
	if local != nil {
		st.Live, st.MaxLive, st.Ready = local.Load()
	}
	return st
}

// heartbeat writes this node's record every heartbeatEvery. The bucket's
// TTL removes it when the node stops writing: that is how the others
// notice a dead or partitioned node.
func (n *Node) heartbeat() {
	defer n.wg.Done()
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		b, _ := json.Marshal(n.self())
		ctx, cancel := context.WithTimeout(context.Background(), heartbeatEvery)
		if _, err := n.nodes.Put(ctx, n.cfg.Name, b); err != nil {
			n.log.Debug("heartbeat not recorded", "err", err)
		}
		cancel()
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
	}
}

// Status lists the nodes whose heartbeat is fresh, this one first.
func (n *Node) Status(ctx context.Context) Status {
	n.mu.Lock()
	synced := n.synced
	n.mu.Unlock()
	st := Status{Node: n.cfg.Name, Mode: "external", Replicas: n.replicas, Synced: synced, Connected: n.nc.IsConnected(),
		Apps: map[string]int{}}
	n.mu.Lock()
	for name, k := range n.known {
		st.Apps[name] = k.version
	}
	n.mu.Unlock()
	if n.srv != nil {
		st.Mode = "embedded"
	}
	self := n.self()
	self.Self = true
	st.Nodes = []NodeStatus{self}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	lister, err := n.nodes.ListKeys(ctx)
	if err != nil {
		st.StateError = n.unavailable("listing nodes", err).Error()
		return st
	}
	var others []NodeStatus
	for k := range lister.Keys() {
		if k == n.cfg.Name {
			continue
		}
		e, err := n.nodes.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			st.StateError = n.unavailable("reading nodes", err).Error()
			break
		}
		var ns NodeStatus
		if len(e.Value()) > 1<<20 || json.Unmarshal(e.Value(), &ns) != nil || ValidName(ns.Name) != nil || ns.Name != k {
			continue
		}
		// Shown on terminals and pages: what is not a plain value goes.
		for app := range ns.Ready {
			if store.ValidateName(app) != nil {
				delete(ns.Ready, app)
			}
		}
		for _, s := range []*string{&ns.AppURL, &ns.AdminURL, &ns.Version} {
			if len(*s) > 256 || !validValue(*s) {
				*s = ""
			}
		}
		if time.Since(e.Created()) > nodeTTL {
			continue
		}
		others = append(others, ns)
	}
	sort.Slice(others, func(i, j int) bool { return others[i].Name < others[j].Name })
	st.Nodes = append(st.Nodes, others...)
	return st
}

// placementEvery is how often the queue subscriptions follow the free
// slots. Between two passes a full node may still be picked; it then
// answers busy at once and the forwarder asks again.
const placementEvery = 20 * time.Millisecond

// placement keeps this node in the queue group of exactly the apps it
// has a free slot for, so that NATS only picks nodes that can serve, and
// "no responders" says at once that none can.
func (n *Node) placement() {
	defer n.wg.Done()
	t := time.NewTicker(placementEvery)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		n.mu.Lock()
		local := n.local
		n.mu.Unlock()
		if local == nil {
			continue
		}
		free := map[string]bool{}
		for _, app := range local.Free() {
			free[app] = true
		}
		n.mu.Lock()
		if n.local == nil {
			n.mu.Unlock()
			continue
		}
		for app, sub := range n.serving {
			if !free[app] {
				sub.Unsubscribe()
				delete(n.serving, app)
			}
		}
		for app := range free {
			if n.serving[app] != nil {
				continue
			}
			sub, err := n.nc.QueueSubscribe(subjectPrefix+app, queueGroup, n.respond)
			if err != nil {
				n.log.Warn("joining an app's queue group", "app", app, "err", err)
				continue
			}
			// Forwarded requests are few and large next to NATS's
			// defaults: bound what one slow pass could let pile up.
			sub.SetPendingLimits(1024, 64<<20)
			n.serving[app] = sub
		}
		n.mu.Unlock()
	}
}
