package heavy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// checkpoint saves a started, preloaded sandbox's whole state (gVisor checkpoint) into dir; the
// sandbox stops. Restoring it is several times faster than starting and importing again.
func (e *Engine) checkpoint(ctx context.Context, dir string) error {
	s, err := e.start(ctx, e.cfg.Defaults.MemoryLimitMB, true, true)
	if err != nil {
		return err
	}
	defer e.destroy(s)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	out := &limitedBuffer{max: 16 << 10}
	cmd := e.runsc("checkpoint", "--image-path", dir, s.id)
	cmd.Stdout, cmd.Stderr = out, out
	if err := runBounded("checkpoint", cmd, 5*time.Minute); err != nil {
		return fmt.Errorf("runsc checkpoint: %w: %s", err, out.String())
	}
	return nil
}

// restore starts a sandbox from a checkpoint image; its agent is waiting for requests already.
// background sandboxes (pool refills) get a small CPU share until a request takes them.
func (e *Engine) restore(ctx context.Context, image string, background bool) (*sandbox, error) {
	s, err := e.newSandbox(ctx, e.cfg.Defaults.MemoryLimitMB, true, background, "restore", "--image-path", image)
	if err != nil {
		return nil, err
	}
	return e.attach(ctx, s, false)
}

// warmUp is run in a restored sandbox before it joins the pool.
const warmUp = "import numpy, pandas, matplotlib.pyplot as plt\nnumpy.arange(10).sum(); pandas.DataFrame({'a': [1]}).describe(); plt.figure(); plt.close('all')"

// refiller makes pooled sandboxes: by restoring a golden checkpoint when that measured faster than a
// cold start, otherwise by starting afresh.
type refiller struct {
	image string    // checkpoint directory; empty when cold starts won (or checkpointing failed)
	made  time.Time // when image was made
	gen   int       // rotations so far
	prev  string    // the image before this one: restores from it may still be running
}

// newRefiller makes the golden checkpoint and times a restore against a cold start.
func (e *Engine) newRefiller(ctx context.Context) *refiller {
	image := filepath.Join(e.cfg.StateDir, "golden")
	coldStart := time.Now()
	if err := e.checkpoint(ctx, image); err != nil {
		e.log.Warn("heavy pool: no golden checkpoint, refilling by cold starts", "err", err)
		return &refiller{}
	}
	cold := time.Since(coldStart)
	restoreStart := time.Now()
	s, err := e.restore(ctx, image, true)
	if err == nil {
		_, err = e.call(ctx, s, map[string]any{"op": "run", "code": warmUp, "filename": "<warm-up>", "fresh": true}, timeoutOf(e.cfg.Defaults), runLine, nil)
		e.destroy(s)
	}
	warm := time.Since(restoreStart)
	if err != nil || warm >= cold {
		e.log.Warn("heavy pool: refilling by cold starts", "restore", warm, "cold", cold, "err", err)
		return &refiller{}
	}
	e.log.Info("heavy pool: refilling from a golden checkpoint", "restore", warm, "cold", cold)
	return &refiller{image: image, made: time.Now()}
}

// rotateGolden replaces the golden checkpoint by a new one, made the same way: every sandbox restored
// from one image shares its str-hash secret, which a live interpreter cannot change. The image before
// the previous one is removed (no restore from it can still be starting). On failure the current one
// stays for another period.
func (e *Engine) rotateGolden(ctx context.Context, r *refiller) *refiller {
	dir := filepath.Join(e.cfg.StateDir, "golden-"+strconv.Itoa(r.gen+1))
	if err := e.checkpoint(ctx, dir); err != nil {
		e.log.Warn("heavy pool: rotating the golden checkpoint", "err", err)
		os.RemoveAll(dir)
		return &refiller{image: r.image, made: time.Now(), gen: r.gen, prev: r.prev}
	}
	if r.prev != "" {
		os.RemoveAll(r.prev)
	}
	next := &refiller{image: dir, made: time.Now(), gen: r.gen + 1, prev: r.image}
	e.golden.Store(next)
	return next
}

func (e *Engine) refill(ctx context.Context, r *refiller) (*sandbox, error) {
	if r.image != "" {
		s, err := e.restore(ctx, r.image, true)
		if err == nil {
			// gVisor brings a restored sandbox's memory back lazily; touching the preloaded modules
			// here pays for that before a request does.
			_, err = e.call(ctx, s, map[string]any{"op": "run", "code": warmUp, "filename": "<warm-up>", "fresh": true}, timeoutOf(e.cfg.Defaults), runLine, nil)
			if err == nil {
				e.Stats.Restored.Add(1)
				return s, nil
			}
			e.destroy(s)
		}
		e.log.Warn("heavy pool: restore failed, starting afresh", "err", err)
	}
	return e.start(ctx, e.cfg.Defaults.MemoryLimitMB, true, true)
}
