package main

import (
	"errors"
	"flag"
	"log/slog"
	"strings"

	"github.com/dust-run/dust/internal/cluster"
)

// serveCluster holds `dust serve`'s cluster flags (docs/cluster.md).
type serveCluster struct {
	nats, creds, cert, key, ca *string
	listen, peers, name        *string
	replicas                   *int
}

func clusterFlags(fs *flag.FlagSet) *serveCluster {
	return &serveCluster{
		nats:     fs.String("nats", "", "join a cluster through an existing NATS cluster at `URL` (nats://host:4222, comma-separated for several)"),
		creds:    fs.String("nats-creds", "", "NATS credentials `FILE` for -nats"),
		cert:     fs.String("nats-tls-cert", "", "client certificate `FILE` (PEM) for a TLS connection to -nats"),
		key:      fs.String("nats-tls-key", "", "client key `FILE` (PEM) for -nats-tls-cert"),
		ca:       fs.String("nats-tls-ca", "", "CA certificate `FILE` (PEM) that -nats servers must be signed by"),
		listen:   fs.String("cluster-listen", "", "run an embedded NATS server whose cluster routes listen on `ADDRESS` (host:port), making this node part of a cluster"),
		peers:    fs.String("peers", "", "the other nodes' -cluster-listen `ADDRESSES`, comma-separated"),
		name:     fs.String("node-name", "", "this node's `NAME` in the cluster, unique (default: the host name)"),
		replicas: fs.Int("replicas", 0, "copies of the shared state (0: min(3, servers))"),
	}
}

// start joins the cluster the flags name, or returns nil for a single node.
func (c *serveCluster) start(data, appURL, adminURL string, log *slog.Logger) (*cluster.Node, error) {
	if *c.nats == "" && *c.listen == "" {
		for _, f := range []*string{c.peers, c.name, c.creds, c.cert, c.key, c.ca} {
			if *f != "" {
				return nil, &plainError{msg: "-peers, -node-name and the -nats-* flags need -cluster-listen or -nats", kind: errUsage}
			}
		}
		return nil, nil
	}
	var peers []string
	for _, p := range strings.Split(*c.peers, ",") {
		if p = strings.TrimSpace(p); p != "" {
			peers = append(peers, p)
		}
	}
	if !isLoopback(*c.listen) && *c.listen != "" {
		log.Warn("THE CLUSTER PORT IS LISTENING BEYOND LOOPBACK WITHOUT AUTHENTICATION: anyone who can reach " + *c.listen +
			" can join the cluster and deploy code; use -nats with TLS and credentials across hosts")
	}
	return cluster.Start(cluster.Config{
		Name: *c.name, URL: *c.nats, Creds: *c.creds, TLSCert: *c.cert, TLSKey: *c.key, TLSCA: *c.ca,
		Listen: *c.listen, Peers: peers, DataDir: data, Replicas: *c.replicas,
		AppURL: appURL, AdminURL: adminURL, Version: versionString(), Logger: log,
	})
}

// clusterExit maps a failure to join to an exit code.
func clusterExit(err error) int {
	switch {
	case errors.Is(err, cluster.ErrConfig), errors.Is(err, errUsage):
		return exitUsage
	case errors.Is(err, cluster.ErrUnavailable):
		return exitUnavailable
	}
	return exitError
}
