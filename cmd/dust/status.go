package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dust-run/dust/internal/cluster"
)

// statusView is what `dust status` shows, as --json prints it: the nodes
// and their load, and where each app is ready. A single node is a
// cluster of one with mode "single".
type statusView struct {
	Node       string               `json:"node"`
	Mode       string               `json:"mode"` // single, embedded or external
	Replicas   int                  `json:"replicas,omitempty"`
	Synced     bool                 `json:"synced"`
	Connected  bool                 `json:"connected"`
	StateError string               `json:"state_error,omitempty"`
	Nodes      []cluster.NodeStatus `json:"nodes"`
	Apps       []appPlacement       `json:"apps"`
}

// appPlacement is one app: its current version (in the shared state, or
// on the single node) and the nodes where that version is ready.
type appPlacement struct {
	Name    string         `json:"name"`
	Version int            `json:"version"`
	ReadyOn []string       `json:"ready_on"`
	Other   map[string]int `json:"other_versions,omitempty"` // node -> the version it has instead
	Missing []string       `json:"not_ready_on"`
}

// statusAnswer is the part of GET /v1/status that `dust status` reads.
type statusAnswer struct {
	Live    int             `json:"live"`
	Cluster *cluster.Status `json:"cluster"`
	Apps    []struct {
		Name    string `json:"name"`
		Version int    `json:"version"`
	} `json:"apps"`
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	f := newCmdFlags("status", "[flags]",
		`Shows the nodes of the cluster the server belongs to (a single node is a
cluster of one), each node's load (live machines against its cap, forwarded
requests it is serving) and where each app's current version is ready. A
node that stopped sending heartbeats drops off the list within 4 seconds.`,
		"  dust status\n  dust status --admin 127.0.0.1:8182 --json | jq '.apps'")
	client := adminFlags(f)
	asJSON := f.Bool("json", false, "print the status as JSON")
	pos, code, ok := f.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) != 0 {
		return f.usageErr(stderr, "want no arguments, got %d", len(pos))
	}
	c, err := client()
	if err != nil {
		fmt.Fprintf(stderr, "dust status: %v\n", err)
		return exitUnavailable
	}
	var ans statusAnswer
	if _, err := c.call("GET", "/v1/status", nil, nil, &ans); err != nil {
		fmt.Fprintf(stderr, "dust status: %v\n", err)
		return adminExit(err)
	}
	v := viewOf(ans)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(v)
		return exitOK
	}
	printStatus(stdout, v, time.Now())
	return exitOK
}

// viewOf turns the server's status into what `dust status` shows.
func viewOf(ans statusAnswer) statusView {
	var v statusView
	want := map[string]int{}
	if st := ans.Cluster; st != nil {
		v = statusView{Node: st.Node, Mode: st.Mode, Replicas: st.Replicas, Synced: st.Synced, Connected: st.Connected,
			StateError: st.StateError, Nodes: st.Nodes}
		for name, ver := range st.Apps {
			want[name] = ver
		}
	} else {
		self := cluster.NodeStatus{Name: "(this node)", Live: ans.Live, Ready: map[string]int{}, Self: true}
		for _, a := range ans.Apps {
			self.Ready[a.Name] = a.Version
			want[a.Name] = a.Version
		}
		v = statusView{Node: self.Name, Mode: "single", Synced: true, Connected: true, Nodes: []cluster.NodeStatus{self}}
	}
	// An app a node serves that the shared state no longer has (removed,
	// the removal not applied there yet) is listed too.
	for _, n := range v.Nodes {
		for name, ver := range n.Ready {
			if _, ok := want[name]; !ok {
				want[name] = ver
			}
		}
	}
	for name, ver := range want {
		p := appPlacement{Name: name, Version: ver, ReadyOn: []string{}, Missing: []string{}}
		for _, n := range v.Nodes {
			switch got, ok := n.Ready[name]; {
			case ok && got == ver:
				p.ReadyOn = append(p.ReadyOn, n.Name)
			case ok:
				if p.Other == nil {
					p.Other = map[string]int{}
				}
				p.Other[n.Name] = got
			default:
				p.Missing = append(p.Missing, n.Name)
			}
		}
		v.Apps = append(v.Apps, p)
	}
	sort.Slice(v.Apps, func(i, j int) bool { return v.Apps[i].Name < v.Apps[j].Name })
	if v.Apps == nil {
		v.Apps = []appPlacement{}
	}
	return v
}

func printStatus(w io.Writer, v statusView, now time.Time) {
	switch v.Mode {
	case "single":
		fmt.Fprintln(w, "single node (not in a cluster: dust serve --cluster-listen or --nats makes one)")
	default:
		state := "shared state reachable"
		if !v.Connected {
			state = "NOT CONNECTED to NATS"
		} else if v.StateError != "" {
			state = "shared state unreachable: " + v.StateError
		}
		sync := ""
		if !v.Synced {
			sync = "; still catching up"
		}
		fmt.Fprintf(w, "cluster of %d node(s), seen from %s (%s NATS, %d replicas): %s%s\n",
			len(v.Nodes), v.Node, v.Mode, v.Replicas, state, sync)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tMACHINES\tFORWARDED IN\tAPPS READY\tSEEN\tADMIN")
	for _, n := range v.Nodes {
		name := n.Name
		if n.Self {
			name += " *"
		}
		machines := fmt.Sprintf("%d", n.Live)
		if n.MaxLive > 0 {
			machines = fmt.Sprintf("%d/%d", n.Live, n.MaxLive)
		}
		seen := "now"
		if !n.Self && !n.SeenAt.IsZero() {
			seen = now.Sub(n.SeenAt).Round(100*time.Millisecond).String() + " ago"
		}
		admin := n.AdminURL
		if admin == "" {
			admin = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", name, machines, n.Serving, len(n.Ready), seen, admin)
	}
	tw.Flush()
	if len(v.Apps) == 0 {
		fmt.Fprintln(w, "\nno apps deployed (dust deploy NAME IMAGE)")
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tVERSION\tREADY ON\tNOT READY ON")
	for _, a := range v.Apps {
		ready := strings.Join(a.ReadyOn, ", ")
		if ready == "" {
			ready = "-"
		}
		var missing []string
		missing = append(missing, a.Missing...)
		for n, ver := range a.Other {
			missing = append(missing, fmt.Sprintf("%s (has v%d)", n, ver))
		}
		sort.Strings(missing)
		miss := strings.Join(missing, ", ")
		if miss == "" {
			miss = "-"
		}
		fmt.Fprintf(tw, "%s\tv%d\t%s\t%s\n", a.Name, a.Version, ready, miss)
	}
	tw.Flush()
}
