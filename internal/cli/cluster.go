package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/cluster"
	"github.com/entersandbox/agentbox/internal/dispatch"
)

// clusterFlags are serve's fleet flags (docs/cluster.md); without --cluster the server is one host.
type clusterFlags struct {
	nats, listen, routeListen, routes, advertise, hostID, tiers, labels *string
	replicas, runSlots, sessionSlots                                    *int
	replicate                                                           *bool

	parsedLabels map[string]string // set by check
	parsedTiers  []api.Tier        // set by check; empty means the tiers the host has
}

func addClusterFlags(fset *flag.FlagSet) *clusterFlags {
	return &clusterFlags{
		nats:         fset.String("cluster", "", "join a fleet: NATS URLs (nats://a:4222,nats://b:4222), or \"embedded\" to run a NATS server with JetStream in this process (docs/cluster.md)"),
		listen:       fset.String("cluster-listen", "127.0.0.1:4222", "with --cluster embedded: the NATS client address other hosts connect to"),
		routeListen:  fset.String("cluster-route-listen", "", "with --cluster embedded: the NATS route address, to cluster embedded NATS servers (default: a single NATS server)"),
		routes:       fset.String("cluster-routes", "", "with --cluster embedded: the other NATS servers' routes (nats-route://b:6222,...)"),
		advertise:    fset.String("advertise", "", "with --cluster: this host's HTTP URL as the other hosts reach it (default http://ADDR)"),
		hostID:       fset.String("host-id", "", "with --cluster: this host's id in the fleet (default the hostname and a random suffix)"),
		tiers:        fset.String("tiers", "", "with --cluster: the tiers this host takes placements for, nano,heavy (default those it has)"),
		labels:       fset.String("labels", "", "with --cluster: labels requests may ask for (X-Agentbox-Labels), k=v,k2=v2"),
		replicas:     fset.Int("cluster-replicas", 1, "with --cluster: JetStream replicas of the fleet's buckets (3 on a 3- or 5-node NATS cluster)"),
		runSlots:     fset.Int("cluster-runs", 0, "with --cluster: one-shot runs this host takes at once before it stops taking placements (default 4 per CPU)"),
		sessionSlots: fset.Int("cluster-sessions", 0, "with --cluster: open sessions this host takes (default 64)"),
		replicate:    fset.Bool("replicate-sessions", false, "with --cluster: copy each session step's snapshot into the fleet's JetStream store, so that another host restores the session when this one dies (docs/cluster.md)"),
	}
}

// check validates the fleet flags before anything starts.
func (f *clusterFlags) check() error {
	if *f.nats == "" {
		if *f.replicate {
			return usagef("--replicate-sessions needs --cluster")
		}
		return nil
	}
	labels, err := cluster.ParseLabels(*f.labels)
	if err != nil {
		return usagef("--labels: %w", err)
	}
	f.parsedLabels = labels
	for t := range strings.SplitSeq(*f.tiers, ",") {
		switch t = strings.TrimSpace(t); t {
		case "":
		case string(api.TierNano), string(api.TierHeavy):
			f.parsedTiers = append(f.parsedTiers, api.Tier(t))
		default:
			return usagef("--tiers: %q is not nano or heavy", t)
		}
	}
	if *f.replicas < 1 || *f.runSlots < 0 || *f.sessionSlots < 0 {
		return usagef("--cluster-replicas must be 1 or more, --cluster-runs and --cluster-sessions 0 (the default) or more")
	}
	if *f.nats != "embedded" {
		for u := range strings.SplitSeq(*f.nats, ",") {
			if !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
				return usagef("--cluster %q: want nats://host:4222 URLs, comma-separated, or embedded", u)
			}
		}
	}
	return nil
}

// join starts the embedded NATS server (with --cluster embedded) and joins the fleet; both nil
// without --cluster. configDigest covers the keys and the ceiling policy, which every host must share.
func (f *clusterFlags) join(ctx context.Context, addr, stateDir, configDigest string, d *dispatch.Dispatcher, hasHeavy bool, log *slog.Logger) (*cluster.Node, *natsserver.Server, error) {
	if *f.nats == "" {
		return nil, nil, nil
	}
	tiers := f.parsedTiers
	if slices.Contains(tiers, api.TierHeavy) && !hasHeavy {
		return nil, nil, usagef("--tiers heavy: this host has no heavy tier")
	}
	labels := f.parsedLabels
	var err error
	urls := strings.Split(*f.nats, ",")
	var ns *natsserver.Server
	if *f.nats == "embedded" {
		var routes []string
		if *f.routes != "" {
			routes = strings.Split(*f.routes, ",")
		}
		if stateDir == "" {
			stateDir = filepath.Join(os.TempDir(), "agentbox")
		}
		ns, err = cluster.StartNATS(cluster.EmbeddedConfig{Listen: *f.listen, StoreDir: filepath.Clean(stateDir) + "-nats", RouteListen: *f.routeListen, Routes: routes})
		if err != nil {
			return nil, nil, err
		}
		urls = []string{"nats://" + *f.listen}
	}
	adv := *f.advertise
	if adv == "" {
		adv = "http://" + addr
	}
	cfg := cluster.Config{NATS: urls, HostID: *f.hostID, URL: adv, Tiers: tiers, Labels: labels,
		RunSlots: *f.runSlots, SessionSlots: *f.sessionSlots, Stats: d.Stats, ConfigDigest: configDigest, Replicas: *f.replicas, Logger: log}
	if *f.replicate {
		cfg.Replicate = d
	}
	node, err := cluster.Start(ctx, cfg)
	if err != nil {
		if ns != nil {
			ns.Shutdown()
		}
		return nil, nil, err
	}
	return node, ns, nil
}

// fleetDigest is the digest hosts compare at join: the serve policy's and the ceiling file's.
func fleetDigest(policy, ceilingFile string) (string, error) {
	h := sha256.New()
	h.Write([]byte(policy))
	if ceilingFile != "" {
		b, err := os.ReadFile(ceilingFile)
		if err != nil {
			return "", usagef("--policy: %w", err)
		}
		h.Write([]byte{0})
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// drain is `agentbox drain [--url URL] [--wait D] [HOST_ID]`: the host stops taking placements;
// drain waits (up to --wait) for its sessions to end.
func (e *env) drain(ctx context.Context, args []string) error {
	const use = "usage: agentbox drain [--url URL] [--api-key KEY] [--wait 10m] [--json] [HOST_ID]  (default: the host at --url)"
	fset := flag.NewFlagSet("drain", flag.ContinueOnError)
	fset.SetOutput(e.stderr)
	client := e.mcpClient(fset)
	wait := fset.Duration("wait", 10*time.Minute, "how long to wait for the host's sessions to end (0: do not wait)")
	asJSON := fset.Bool("json", false, "print the host's record as JSON")
	pos, err := parseInterspersed(fset, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usagef("%s", use)
	}
	id := "self"
	if len(pos) == 1 {
		id = pos[0]
	}
	c, err := client()
	if err != nil {
		return err
	}
	h, err := c.DrainHost(ctx, id)
	if err != nil {
		return apiErr(err)
	}
	fmt.Fprintf(e.stderr, "host %s is draining: %d sessions open\n", h.ID, h.Load.Sessions)
	ctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	for *wait > 0 && h.State != api.HostDrained {
		select {
		case <-ctx.Done():
			return fmt.Errorf("host %s still has %d sessions open after %s (it takes no new ones)", h.ID, h.Load.Sessions, *wait)
		case <-time.After(time.Second):
		}
		list, err := c.Hosts(ctx)
		if err != nil {
			return apiErr(err)
		}
		found := false
		for _, x := range list.Hosts {
			if x.ID == h.ID {
				h, found = x, true
			}
		}
		if !found {
			return fmt.Errorf("host %s left the fleet while draining", h.ID)
		}
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(h)
	}
	fmt.Fprintf(e.stdout, "%s\t%s\t%d sessions\n", h.ID, h.State, h.Load.Sessions)
	return nil
}
