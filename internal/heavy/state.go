package heavy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/netns"
)

// The state root (Config.StateDir) holds everything the engine leaves on the host while it runs:
//
//	lock       flock'd by the engine that owns the root; holds its pid
//	runsc/     runsc's --root: container state, and the null network namespace it bind-mounts
//	bundles/   one OCI bundle per sandbox, named after its container id
//	golden*/   golden checkpoint images of the pool
//	steps/     scratch images of time travel: a step's checkpoint until it is cut into blocks, a
//	           restore's image while runsc reads it (steps.go)
//	agent/     agent.py and outputs.py, bound read-only into every sandbox
//	etc/       the sandboxes' /etc/hostname and /etc/resolv.conf (and CA bundle, when networked)
//	netns/     the networked sandboxes' namespaces, pinned (bind mounts); their veths and the
//	           nftables table live in the host's network namespace (see network.go)
//
// A crashed server leaves all of it, and runsc processes, cgroups and mounts besides; the next engine
// on the same root sweeps them (sweep) before it starts anything.

// DefaultStateDir is the state root a server uses when none is given: /var/lib/agentbox/state for
// root, else the user cache directory's agentbox/state (e.g. $XDG_CACHE_HOME/agentbox/state).
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/agentbox/state"
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	return filepath.Join(base, "agentbox", "state")
}

// KeepDir is the one entry of the state root the sweep leaves: the server's audit log lives there
// (internal/audit), and it must outlive the crash the sweep cleans up after.
const KeepDir = "audit"

// ErrStateInUse is returned by New when another engine holds the state root's lock.
var ErrStateInUse = errors.New("heavy state directory is in use by another agentbox server")

// lockState takes dir's lock file (flock, released when the process dies, so a crash leaves no stale
// lock) and writes our pid into it. A second engine on the same root gets ErrStateInUse.
func lockState(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening state lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(f.Name())
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errdefs.With(errdefs.Conflict, fmt.Errorf("%w: %s is locked by pid %s; give each server its own --state-dir",
				ErrStateInUse, dir, strings.TrimSpace(string(owner))))
		}
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// sweepCounts says what a sweep found and removed.
type sweepCounts struct {
	Containers, Processes, Cgroups, Mounts, Entries int
	Network                                         netns.SweepCounts
}

// sweep removes what a previous engine on this state root left behind: its runsc containers
// (runsc kill and delete, bounded), runsc processes still running with this root, the sandboxes'
// cgroups, mounts under the root, and every file but the lock and KeepDir. It runs under the root's lock, before
// this engine starts anything, so nothing it finds is ours.
func (e *Engine) sweep() sweepCounts {
	var n sweepCounts
	root := e.cfg.StateDir
	ids := map[string]bool{}
	if entries, err := os.ReadDir(filepath.Join(root, "bundles")); err == nil {
		for _, ent := range entries {
			ids[ent.Name()] = true
		}
	}
	if _, err := os.Stat(filepath.Join(root, "runsc")); err == nil {
		var out bytes.Buffer
		cmd := e.runsc("list", "-quiet")
		cmd.Stdout = &out
		if err := runBounded("list", cmd, runscTimeout); err != nil {
			e.log.Warn("sweeping the heavy state: runsc list", "err", err)
		}
		for _, id := range strings.Fields(out.String()) {
			ids[id] = true
		}
	}
	for id := range ids {
		if !strings.HasPrefix(id, "agentbox-") {
			continue // not a name we give: leave it to whoever made it
		}
		n.Containers++
		if err := runBounded("kill", e.runsc("kill", "--all", id, "KILL"), runscTimeout); err != nil {
			e.log.Debug("sweep: runsc kill", "id", id, "err", err)
		}
		if err := runBounded("delete", e.runsc("delete", "--force", id), runscTimeout); err != nil {
			e.log.Debug("sweep: runsc delete", "id", id, "err", err)
		}
	}
	n.Processes = killRunscProcesses(filepath.Join(root, "runsc"))
	for id := range ids {
		if strings.HasPrefix(id, "agentbox-") {
			n.Cgroups += removeCgroups(id)
		}
	}
	// Before the mounts go: the namespaces' files are among them, the veths and table are not. A
	// root that had networked sandboxes may be reopened without Config.Network: swept all the same.
	var err error
	if n.Network, err = netns.Sweep(netPrefix(root), e.netDir()); err != nil {
		if e.cfg.Network != nil {
			e.log.Warn("sweeping the heavy state: sandbox networks", "err", err)
		} else {
			e.log.Debug("sweeping the heavy state: sandbox networks", "err", err)
		}
	}
	n.Mounts = unmountUnder(root)
	entries, _ := os.ReadDir(root)
	for _, ent := range entries {
		if ent.Name() == "lock" || ent.Name() == KeepDir {
			continue
		}
		if err := os.RemoveAll(filepath.Join(root, ent.Name())); err != nil {
			e.log.Warn("sweeping the heavy state", "path", ent.Name(), "err", err)
		}
		n.Entries++
	}
	return n
}

// killRunscProcesses SIGKILLs the processes whose command line passes runscRoot as runsc's --root
// (runsc itself, its sandbox and gofer), and reports how many there were.
func killRunscProcesses(runscRoot string) int {
	procs, _ := os.ReadDir("/proc")
	killed := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if runscRootOf(strings.Split(string(b), "\x00")) == runscRoot {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
	}
	return killed
}

// runscRootOf is the --root a runsc command line (runsc, runsc-sandbox, runsc-gofer) names, or "".
func runscRootOf(args []string) string {
	if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "runsc") && filepath.Base(args[0]) != "nice" {
		return ""
	}
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--root="); ok {
			return v
		}
		if a == "--root" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// cgroupRoot is where cgroupfs is mounted; a variable for the tests.
var cgroupRoot = "/sys/fs/cgroup"

// removeCgroups removes the cgroups runsc made for container id (it names them after the id: one
// per controller under cgroup v1, one under v2), killing what is left in them first, and reports how
// many it removed.
func removeCgroups(id string) int {
	paths, _ := filepath.Glob(filepath.Join(cgroupRoot, "*", id))
	paths = append(paths, filepath.Join(cgroupRoot, id))
	removed := 0
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		for i := 0; i < 50; i++ {
			if b, err := os.ReadFile(filepath.Join(p, "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			if err := syscall.Rmdir(p); err == nil || errors.Is(err, syscall.ENOENT) {
				removed++
				break
			}
			time.Sleep(20 * time.Millisecond) // the killed processes are still leaving
		}
	}
	return removed
}

// mountsUnder lists the mount points at or under dir in /proc/self/mountinfo, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, and so on).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount under dir (stacked ones too) and reports how many it detached.
func unmountUnder(dir string) int {
	n := 0
	for round := 0; round < 64; round++ {
		mps := mountsUnder(dir)
		if len(mps) == 0 {
			break
		}
		progress := false
		for _, mp := range mps {
			if syscall.Unmount(mp, syscall.MNT_DETACH) == nil {
				n++
				progress = true
			}
		}
		if !progress {
			break
		}
	}
	return n
}

// cleanup undoes what a function acquired when it returns early: steps are added as things are
// acquired and run in reverse by run (deferred), unless release was called on success.
type cleanup struct{ undo []func() }

func (c *cleanup) add(f func()) { c.undo = append(c.undo, f) }

func (c *cleanup) release() { c.undo = nil }

func (c *cleanup) run() {
	for i := len(c.undo) - 1; i >= 0; i-- {
		c.undo[i]()
	}
	c.undo = nil
}
