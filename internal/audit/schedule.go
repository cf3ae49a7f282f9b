package audit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// WriteReport writes the period's report into dir as <period>-<start date>.{json,md,html} (each
// written to a temporary name and renamed, so a reader never sees half a file).
func (l *Log) WriteReport(ctx context.Context, dir, period string, date time.Time) ([]string, error) {
	rep, err := l.Report(ctx, period, date)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: report dir: %w", err)
	}
	start, _, _ := PeriodBounds(period, date)
	var paths []string
	for _, f := range []string{ReportJSON, ReportMarkdown, ReportHTML} {
		b, _, err := Render(rep, f)
		if err != nil {
			return paths, err
		}
		p := filepath.Join(dir, fmt.Sprintf("%s-%s.%s", period, start.Format(time.DateOnly), f))
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return paths, fmt.Errorf("audit: writing the report: %w", err)
		}
		if err := os.Rename(tmp, p); err != nil {
			return paths, fmt.Errorf("audit: writing the report: %w", err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// ScheduleDaily writes the previous day's report into dir every day at hour (UTC), and at start when
// the last finished day's report is missing (the server was down at that hour). It returns when ctx
// is done.
func (l *Log) ScheduleDaily(ctx context.Context, dir string, hour int) error {
	if hour < 0 || hour > 23 {
		return fmt.Errorf("audit: report hour %d: want 0 to 23", hour)
	}
	for {
		now := l.cfg.Now().UTC()
		today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
		due := today.Add(time.Duration(hour) * time.Hour)
		// The last day whose report is due by now.
		day := today.AddDate(0, 0, -1)
		if now.Before(due) {
			day = day.AddDate(0, 0, -1)
		}
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("%s-%s.%s", Daily, day.Format(time.DateOnly), ReportHTML))); errors.Is(err, fs.ErrNotExist) {
			if _, err := l.WriteReport(ctx, dir, Daily, day); err != nil {
				l.log.Warn("audit: daily report failed", "day", day.Format(time.DateOnly), "err", err)
			} else {
				l.log.Info("audit: daily report written", "day", day.Format(time.DateOnly), "dir", dir)
			}
		}
		next := due
		if !now.Before(due) {
			next = due.AddDate(0, 0, 1)
		}
		t := time.NewTimer(next.Sub(now))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}
