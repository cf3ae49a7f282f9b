package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures a NATS server with JetStream run inside agentbox (`--cluster embedded`).
type EmbeddedConfig struct {
	// Listen is the client address; empty means 127.0.0.1:4222.
	Listen string
	// StoreDir keeps JetStream's files; required.
	StoreDir string
	// Name is the server's name (unique in a NATS cluster); empty means one derived from Listen.
	Name string
	// RouteListen, when set, is the address other NATS servers route to, and Routes are theirs
	// (nats-route://host:6222); empty means a single NATS server.
	RouteListen string
	Routes      []string
	// ClusterName names the NATS cluster when routed; empty means "agentbox".
	ClusterName string
}

// StartNATS starts an embedded NATS server with JetStream and waits until it takes connections.
func StartNATS(cfg EmbeddedConfig) (*natsserver.Server, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:4222"
	}
	if cfg.StoreDir == "" {
		return nil, errors.New("cluster: embedded NATS: no store directory")
	}
	host, port, err := splitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("cluster: embedded NATS listen address: %w", err)
	}
	if cfg.Name == "" {
		cfg.Name = "agentbox-" + labelSafe(cfg.Listen)
	}
	opts := &natsserver.Options{ServerName: cfg.Name, Host: host, Port: port, JetStream: true, StoreDir: cfg.StoreDir,
		NoSigs: true, NoLog: true, MaxPayload: 8 << 20}
	if cfg.RouteListen != "" {
		rh, rp, err := splitHostPort(cfg.RouteListen)
		if err != nil {
			return nil, fmt.Errorf("cluster: embedded NATS route address: %w", err)
		}
		opts.Cluster = natsserver.ClusterOpts{Name: cfg.ClusterName, Host: rh, Port: rp}
		if opts.Cluster.Name == "" {
			opts.Cluster.Name = "agentbox"
		}
		for _, r := range cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("cluster: embedded NATS route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	s, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("cluster: embedded NATS: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("cluster: embedded NATS did not start listening on %s within 10 s", cfg.Listen)
	}
	return s, nil
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return h, port, nil
}
