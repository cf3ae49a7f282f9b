package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures a NATS server with JetStream run inside agentbox (`--cluster embedded`).
type EmbeddedConfig struct {
	// Listen is the client address; empty means 127.0.0.1:4222, port 0 a free port (the server's
	// Addr says which).
	Listen string
	// StoreDir keeps JetStream's files; required.
	StoreDir string
	// Name is the server's name (unique in a NATS cluster); empty means one derived from Listen.
	Name string
	// RouteListen, when set, is the address other NATS servers route to, and Routes are theirs
	// (nats-route://host:6222); empty means a single NATS server. Port 0 is a free port (the
	// server's ClusterAddr says which).
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
	opts := &natsserver.Options{ServerName: cfg.Name, Host: host, Port: anyPort(port), JetStream: true, StoreDir: cfg.StoreDir,
		NoSigs: true, NoLog: true, MaxPayload: 8 << 20}
	if cfg.RouteListen != "" {
		rh, rp, err := splitHostPort(cfg.RouteListen)
		if err != nil {
			return nil, fmt.Errorf("cluster: embedded NATS route address: %w", err)
		}
		opts.Cluster = natsserver.ClusterOpts{Name: cfg.ClusterName, Host: rh, Port: anyPort(rp)}
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
	// Only its fatal errors are kept: they say why it did not start (a port in use, JetStream's
	// requirements), which a bare "not ready" would hide.
	fatal := &fatalLog{}
	s.SetLoggerV2(fatal, false, false, false)
	go s.Start()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if s.ReadyForConnections(50 * time.Millisecond) {
			return s, nil
		}
		if why := fatal.last(); why != "" {
			s.Shutdown()
			return nil, fmt.Errorf("cluster: embedded NATS on %s did not start: %s", cfg.Listen, why)
		}
	}
	s.Shutdown()
	return nil, fmt.Errorf("cluster: embedded NATS did not start listening on %s within 10 s", cfg.Listen)
}

// fatalLog is a nats-server logger that keeps the last fatal error and drops everything else.
type fatalLog struct {
	mu  sync.Mutex
	msg string // guarded by mu
}

func (l *fatalLog) Fatalf(format string, v ...any) {
	l.mu.Lock()
	l.msg = fmt.Sprintf(format, v...)
	l.mu.Unlock()
}

func (l *fatalLog) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.msg
}

func (*fatalLog) Noticef(string, ...any) {}
func (*fatalLog) Warnf(string, ...any)   {}
func (*fatalLog) Errorf(string, ...any)  {}
func (*fatalLog) Debugf(string, ...any)  {}
func (*fatalLog) Tracef(string, ...any)  {}

// anyPort maps port 0 to nats-server's "pick a free port" (its own 0 means the default port).
func anyPort(p int) int {
	if p == 0 {
		return natsserver.RANDOM_PORT
	}
	return p
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
