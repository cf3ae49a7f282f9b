package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/entersandbox/agentbox/api"
	"github.com/entersandbox/agentbox/internal/audit"
	"github.com/entersandbox/agentbox/internal/errdefs"
	"github.com/entersandbox/agentbox/internal/limits"
)

// HeaderHostsMissing names (comma-separated) the hosts that did not answer a fleet-wide answer
// (the sessions list, audit search and reports): what they hold is not in it.
const HeaderHostsMissing = "X-Agentbox-Hosts-Missing"

// HeaderHost names the host that served a forwarded request, and the host whose audit chain a
// GET /v1/audit/verify checked.
const HeaderHost = "X-Agentbox-Host"

// askTimeout bounds a fleet-wide answer's wait for each host: a host slower than that is named
// missing.
const askTimeout = 5 * time.Second

// fleetCursorPrefix marks a fleet's audit cursor: each host's own cursor (or done), by host.
const fleetCursorPrefix = "fleet1."

// cursorDone is a host's place in a fleet cursor once its events are all shown.
const cursorDone = "-"

// hostAnswer is one host's answer to a fleet-wide GET.
type hostAnswer struct {
	host string
	body []byte
	err  error
}

// askHosts GETs pathQuery from each of hosts (id → base URL, never this host) in parallel with the
// caller's key, within askTimeout. The answers are in no particular order.
func (n *Node) askHosts(ctx context.Context, r *http.Request, hosts map[string]string, pathQuery string) []hostAnswer {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	client := &http.Client{Transport: n.proxy.rp.Transport}
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := make([]hostAnswer, 0, len(hosts))
	for id, base := range hosts {
		wg.Go(func() {
			b, err := n.getFrom(ctx, client, base, pathQuery, r.Header.Get("Authorization"))
			mu.Lock()
			out = append(out, hostAnswer{host: id, body: b, err: err})
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// getFrom GETs pathQuery from the host at base as a forwarded request (served there, not relayed
// again); any answer but 200 is an error.
func (n *Node) getFrom(ctx context.Context, client *http.Client, base, pathQuery, auth string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+pathQuery, nil)
	if err != nil {
		return nil, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set(HeaderForwarded, n.cfg.HostID)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s: %s", resp.Status, limits.Text(string(b), 256))
	}
	return b, nil
}

// serveRecorded serves r on this host into a recorder.
func serveRecorded(next http.Handler, r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	return rec
}

// copyAnswer writes a recorded answer as it is (this host's own error answers).
func copyAnswer(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}

// withQuery is r for path?q on this host.
func withQuery(r *http.Request, q url.Values) *http.Request {
	r2 := r.Clone(r.Context())
	r2.URL.RawQuery = q.Encode()
	r2.RequestURI = r2.URL.RequestURI()
	return r2
}

// goneHosts are the hosts this host has seen in the fleet (since it started) that are not in live
// now (nil: the live hosts now): they left or died, and their audit logs are on their own disks, so
// a fleet-wide search or report does not have their events.
func (n *Node) goneHosts(live map[string]api.Host) []string {
	if live == nil {
		live = n.liveHosts()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for id := range n.seen {
		if _, ok := live[id]; !ok && id != n.cfg.HostID {
			out = append(out, id)
		}
	}
	return out
}

// mergeNames is a and b sorted, without repeats.
func mergeNames(a, b []string) []string {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

func setMissing(w http.ResponseWriter, missing []string) {
	if len(missing) > 0 {
		w.Header().Set(HeaderHostsMissing, strings.Join(missing, ","))
	}
}

func encodeFleetCursor(c map[string]string) string {
	b, _ := json.Marshal(c)
	return fleetCursorPrefix + base64.RawURLEncoding.EncodeToString(b)
}

func decodeFleetCursor(s string) (map[string]string, error) {
	bad := errdefs.With(errdefs.InvalidArgument, fmt.Errorf("cursor %q is not one this fleet gave (use next_cursor of the previous page)", limits.Text(s, 64)))
	rest, ok := strings.CutPrefix(s, fleetCursorPrefix)
	if !ok {
		return nil, bad
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return nil, bad
	}
	var c map[string]string
	if json.Unmarshal(b, &c) != nil || len(c) == 0 {
		return nil, bad
	}
	for h := range c {
		if !keyRE.MatchString(h) {
			return nil, bad
		}
	}
	return c, nil
}

// auditEvents is GET /v1/audit/events for the fleet: every host searches its own log (its index,
// its chain) and the pages are merged newest first. The cursor holds each host's own cursor, so a
// page goes on where each host's part of the last one ended; a host that does not answer is named
// in hosts_missing and asked again, from where it was, for the next page.
func (n *Node) auditEvents(next http.Handler, w http.ResponseWriter, r *http.Request, fail FailFunc) {
	q := r.URL.Query()
	now := time.Now()
	var places map[string]string // host → its cursor ("" from the newest, cursorDone when shown)
	if c := q.Get("cursor"); c != "" {
		var err error
		if places, err = decodeFleetCursor(c); err != nil {
			fail(w, r, err)
			return
		}
	}
	q.Del("cursor")
	parsed, err := audit.ParseQuery(q, now)
	if err != nil {
		fail(w, r, err)
		return
	}
	limit := parsed.Limit
	if limit <= 0 {
		limit = 100
	}
	// Relative times ("24h") are fixed here, so that every host searches the same window.
	for _, k := range []string{"since", "until"} {
		if t := map[string]time.Time{"since": parsed.Since, "until": parsed.Until}[k]; !t.IsZero() {
			q.Set(k, t.UTC().Format(time.RFC3339Nano))
		}
	}
	live := n.liveHosts()
	if places == nil {
		places = map[string]string{n.cfg.HostID: ""}
		for id := range live {
			places[id] = ""
		}
	}
	hostQuery := func(h string) url.Values {
		hq := cloneValues(q)
		if c := places[h]; c != "" {
			hq.Set("cursor", c)
		}
		return hq
	}
	pages := map[string]api.AuditEventList{}
	var missing []string
	if c, ok := places[n.cfg.HostID]; ok && c != cursorDone {
		rec := serveRecorded(next, withQuery(r, hostQuery(n.cfg.HostID)))
		if rec.Code != http.StatusOK {
			copyAnswer(w, rec) // this host's own refusal (no audit log, a bad query) is the answer
			return
		}
		var page api.AuditEventList
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
			fail(w, r, fmt.Errorf("cluster: this host's audit page: %w", err))
			return
		}
		pages[n.cfg.HostID] = page
	}
	// Each host is asked with its own cursor, so the asks differ by host.
	asks := map[string]string{} // host → path and query
	for h, c := range places {
		if h == n.cfg.HostID || c == cursorDone {
			continue
		}
		if _, ok := live[h]; !ok {
			missing = append(missing, h) // left or died: its events are not searched
			continue
		}
		asks[h] = "/v1/audit/events?" + hostQuery(h).Encode()
	}
	for _, h := range missing {
		delete(places, h)
	}
	missing = mergeNames(missing, n.goneHosts(live))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for h, pq := range asks {
		wg.Go(func() {
			ans := n.askHosts(r.Context(), r, map[string]string{h: live[h].URL}, pq)[0]
			var page api.AuditEventList
			if ans.err == nil {
				ans.err = json.Unmarshal(ans.body, &page)
			}
			mu.Lock()
			defer mu.Unlock()
			if ans.err != nil {
				n.log.Warn("cluster: searching a host's audit log", "to", h, "err", ans.err)
				missing = append(missing, h)
				return
			}
			pages[h] = page
		})
	}
	wg.Wait()
	out := mergeAuditPages(pages, places, limit)
	missing = mergeNames(missing, nil)
	out.HostsMissing = missing
	setMissing(w, missing)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// cloneValues copies url.Values.
func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	return out
}

// mergeAuditPages merges each host's page (newest first) into one page of limit, and the cursor
// that goes on from it: a host none of whose events were shown keeps its cursor, one shown to the
// end of its page goes on with its next cursor (or is done), one shown partly goes on below the
// last event shown. places holds every host's cursor before this page (those missing keep theirs).
func mergeAuditPages(pages map[string]api.AuditEventList, places map[string]string, limit int) api.AuditEventList {
	type item struct {
		ev api.AuditEvent
		t  time.Time
	}
	var all []item
	for h, p := range pages {
		for _, ev := range p.Events {
			ev.LogHost = h
			t, _ := time.Parse(time.RFC3339Nano, ev.Time)
			all = append(all, item{ev, t})
		}
	}
	// Newest first; ties by host, then by seq (newest first), so that pages are stable.
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if !a.t.Equal(b.t) {
			return a.t.After(b.t)
		}
		if a.ev.LogHost != b.ev.LogHost {
			return a.ev.LogHost < b.ev.LogHost
		}
		return a.ev.Seq > b.ev.Seq
	})
	out := api.AuditEventList{Events: []api.AuditEvent{}}
	shown := map[string]int{}
	last := map[string]int64{}
	for _, it := range all[:min(limit, len(all))] {
		out.Events = append(out.Events, it.ev)
		shown[it.ev.LogHost]++
		last[it.ev.LogHost] = it.ev.Seq
	}
	nextPlaces := map[string]string{}
	more := false
	for h, c := range places {
		p, asked := pages[h]
		switch {
		case !asked: // done already, or missing: as it was
		case shown[h] == 0 && len(p.Events) > 0:
			// none shown: as it was
		case shown[h] == len(p.Events):
			c = p.NextCursor
			if c == "" {
				c = cursorDone
			}
		default:
			c = audit.CursorBelow(last[h])
		}
		nextPlaces[h] = c
		if asked && c != cursorDone {
			more = true // a host missing now is asked again only with the others' next page
		}
	}
	if more {
		out.NextCursor = encodeFleetCursor(nextPlaces)
	}
	return out
}

// auditReport is GET /v1/audit/reports/{period} for the fleet: every host reports on its own log
// (JSON) and the reports are summed; each host's chain verification is kept in hosts. A host that
// does not answer is named in hosts_missing, and the report's verification is then not OK.
func (n *Node) auditReport(next http.Handler, w http.ResponseWriter, r *http.Request, fail FailFunc) {
	q := r.URL.Query()
	format := q.Get("format")
	if format == "" {
		format = audit.ReportJSON
	}
	if format != audit.ReportJSON && format != audit.ReportMarkdown && format != audit.ReportHTML {
		fail(w, r, errdefs.With(errdefs.InvalidArgument, fmt.Errorf("format %q: want json, md or html", limits.Text(format, 64))))
		return
	}
	q.Set("format", audit.ReportJSON)
	rec := serveRecorded(next, withQuery(r, q))
	if rec.Code != http.StatusOK {
		copyAnswer(w, rec)
		return
	}
	reports := map[string]api.AuditReport{}
	var mine api.AuditReport
	if err := json.Unmarshal(rec.Body.Bytes(), &mine); err != nil {
		fail(w, r, fmt.Errorf("cluster: this host's audit report: %w", err))
		return
	}
	reports[n.cfg.HostID] = mine
	hosts := map[string]string{}
	for id, h := range n.liveHosts() {
		if id != n.cfg.HostID {
			hosts[id] = h.URL
		}
	}
	missing := n.goneHosts(nil)
	for _, a := range n.askHosts(r.Context(), r, hosts, r.URL.Path+"?"+q.Encode()) {
		var rep api.AuditReport
		if a.err == nil {
			a.err = json.Unmarshal(a.body, &rep)
		}
		if a.err != nil {
			n.log.Warn("cluster: a host's audit report", "to", a.host, "err", a.err)
			missing = append(missing, a.host)
			continue
		}
		reports[a.host] = rep
	}
	missing = mergeNames(missing, nil)
	rep := mergeReports(reports, missing)
	rep.GeneratedAt = time.Now().UTC().Format(time.RFC3339Nano)
	body, ct, err := audit.Render(rep, format)
	if err != nil {
		fail(w, r, err)
		return
	}
	setMissing(w, missing)
	w.Header().Set("Content-Type", ct)
	if format == audit.ReportHTML {
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	}
	w.Write(body)
}

// reportTop bounds a merged report's by_actor, by_session and top_blocked, as a host's own report
// does. A key outside one host's top 20 is not counted from that host: those lists are the top of
// each host's, summed.
const reportTop = 20

// mergeReports sums the hosts' reports of one period.
func mergeReports(reports map[string]api.AuditReport, missing []string) api.AuditReport {
	ids := slices.Sorted(maps.Keys(reports))
	first := reports[ids[0]]
	out := api.AuditReport{Period: first.Period, Start: first.Start, End: first.End, NewHosts: []string{}, PolicyChanges: []api.AuditEvent{},
		EventsPerHour: make([]int64, len(first.EventsPerHour)), BlockedPerHour: make([]int64, len(first.BlockedPerHour)), HostsMissing: missing}
	sums := map[string]map[string]int64{}
	add := func(name string, rows []api.AuditCount) {
		if sums[name] == nil {
			sums[name] = map[string]int64{}
		}
		for _, c := range rows {
			sums[name][c.Key] += c.Count
		}
	}
	newHosts := map[string]bool{}
	v := api.AuditVerification{OK: len(missing) == 0}
	if len(missing) > 0 {
		v.Problem = fmt.Sprintf("not verified: host %s did not answer (its events are not counted)", strings.Join(missing, ", "))
	}
	for _, id := range ids {
		r := reports[id]
		out.Events += r.Events
		out.AuthFailures += r.AuthFailures
		add("type", r.ByType)
		add("verdict", r.ByVerdict)
		add("tier", r.ByTier)
		add("session", r.BySession)
		add("actor", r.ByActor)
		add("blocked", r.TopBlocked)
		add("dlp", r.DLPFindings)
		add("errors", r.Errors)
		for _, h := range r.NewHosts {
			newHosts[h] = true
		}
		for _, e := range r.PolicyChanges {
			e.LogHost = id
			out.PolicyChanges = append(out.PolicyChanges, e)
		}
		for i := range min(len(out.EventsPerHour), len(r.EventsPerHour)) {
			out.EventsPerHour[i] += r.EventsPerHour[i]
		}
		for i := range min(len(out.BlockedPerHour), len(r.BlockedPerHour)) {
			out.BlockedPerHour[i] += r.BlockedPerHour[i]
		}
		hv := r.Verification
		out.Hosts = append(out.Hosts, api.AuditHostReport{Host: id, Events: r.Events, Verification: hv})
		v.Events += hv.Events
		v.Checkpoints += hv.Checkpoints
		if !hv.OK && v.OK {
			v.OK, v.BadSeq, v.BadEventID = false, hv.BadSeq, hv.BadEventID
			v.Problem = fmt.Sprintf("host %s: %s", id, hv.Problem)
		}
	}
	out.Verification = v
	out.ByType, out.ByVerdict, out.ByTier = audit.Counts(sums["type"], 0), audit.Counts(sums["verdict"], 0), audit.Counts(sums["tier"], 0)
	out.BySession, out.ByActor, out.TopBlocked = audit.Counts(sums["session"], reportTop), audit.Counts(sums["actor"], reportTop), audit.Counts(sums["blocked"], reportTop)
	out.DLPFindings, out.Errors = audit.Counts(sums["dlp"], 0), audit.Counts(sums["errors"], 0)
	out.NewHosts = append(out.NewHosts, slices.Sorted(maps.Keys(newHosts))...)
	sort.SliceStable(out.PolicyChanges, func(i, j int) bool {
		a, _ := time.Parse(time.RFC3339Nano, out.PolicyChanges[i].Time)
		b, _ := time.Parse(time.RFC3339Nano, out.PolicyChanges[j].Time)
		return a.Before(b)
	})
	return out
}

// auditVerify is GET /v1/audit/verify in a fleet: each host's chain is its own, so it verifies one
// host's, this one's or ?host=ID's, and says whose in X-Agentbox-Host.
func (n *Node) auditVerify(next http.Handler, w http.ResponseWriter, r *http.Request, fail FailFunc) {
	host := r.URL.Query().Get("host")
	if host == "" || host == n.cfg.HostID {
		w.Header().Set(HeaderHost, n.cfg.HostID)
		n.serveLocal(next, w, r, "")
		return
	}
	h, ok := n.liveHost(r.Context(), host)
	if !ok {
		fail(w, r, errdefs.With(errdefs.NotFound, fmt.Errorf("host %q is not in the fleet: its audit chain cannot be verified from here", limits.Text(host, 64))))
		return
	}
	n.forward(w, r, host, h.URL, "", fail)
}
