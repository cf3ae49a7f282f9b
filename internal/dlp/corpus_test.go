package dlp

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

//go:generate go run ./gencorpus -out testdata/corpus.jsonl -gitleaks ${GITLEAKS_DIR}

type corpusLabel struct {
	Type       string
	Start, End int
}

type corpusRecord struct {
	Source, Kind, Text, Rule string
	Labels                   []corpusLabel
}

func loadCorpus(t testing.TB) []corpusRecord {
	t.Helper()
	f, err := os.Open("testdata/corpus.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var recs []corpusRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var r corpusRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("corpus line %d: %v", len(recs)+1, err)
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return recs
}

type score struct{ tp, fp, fn int }

func (s score) precision() float64 {
	if s.tp+s.fp == 0 {
		return 1
	}
	return float64(s.tp) / float64(s.tp+s.fp)
}

func (s score) recall() float64 {
	if s.tp+s.fn == 0 {
		return 1
	}
	return float64(s.tp) / float64(s.tp+s.fn)
}

// validatedPII are the types held to the bar.
var validatedPII = []string{TypeCard, TypeIBAN, TypeUSSSN, TypeJPMyNumber, TypeEmail, TypePhone}

// TestCorpusPrecisionRecall scores every detector on the labelled corpus
// (go run ./internal/dlp/gencorpus) and holds the validated PII types to
// precision and recall >= 0.98. PII is scored by span: a finding of the
// planted type overlapping the label is a true positive, any other finding
// of a PII type a false positive. gitleaks examples are scored per record:
// a true-positive example must yield a finding of its rule, a
// false-positive example must yield none of that rule.
func TestCorpusPrecisionRecall(t *testing.T) {
	e := testEngine(t)
	recs := loadCorpus(t)
	pii := map[string]*score{}
	for _, typ := range append(slices.Clone(validatedPII), TypeJWT, TypePrivateKey) {
		pii[typ] = &score{}
	}
	rules := map[string]*score{}
	secretAll := &score{}
	var missedRules, fpRules []string
	fpExamples := map[string][]string{} // type -> a few false-positive kinds, for the log
	negatives, secretOnNegatives := 0, 0
	for _, r := range recs {
		switch r.Source {
		case "gitleaks-tp", "gitleaks-fp":
			fs := e.scanAll([]byte(r.Text)) // each rule on its own, before duplicates are merged
			s := rules[r.Rule]
			if s == nil {
				s = &score{}
				rules[r.Rule] = s
			}
			hit := slices.ContainsFunc(fs, func(f Finding) bool { return f.Rule == r.Rule })
			switch {
			case r.Source == "gitleaks-tp" && hit:
				s.tp++
				secretAll.tp++
			case r.Source == "gitleaks-tp":
				s.fn++
				secretAll.fn++
			case hit:
				s.fp++
				secretAll.fp++
			}
			continue
		}
		fs := e.Scan([]byte(r.Text))
		if r.Source == "negative" {
			negatives++
			if slices.ContainsFunc(fs, func(f Finding) bool { return f.Type == TypeSecret }) {
				secretOnNegatives++
				if len(fpExamples["secret on a hard negative"]) < 5 {
					fpExamples["secret on a hard negative"] = append(fpExamples["secret on a hard negative"], r.Kind+" "+strconv.Quote(r.Text))
				}
			}
		}
		matched := make([]bool, len(r.Labels))
		for _, f := range fs {
			s := pii[f.Type]
			if s == nil {
				continue // secrets in PII records are not scored here
			}
			hit := false
			for i, l := range r.Labels {
				if l.Type == f.Type && f.Start < l.End && l.Start < f.End {
					hit = true
					if !matched[i] {
						matched[i] = true
						s.tp++
					}
				}
			}
			if !hit {
				s.fp++
				if len(fpExamples[f.Type]) < 5 {
					fpExamples[f.Type] = append(fpExamples[f.Type], fmt.Sprintf("%s/%s %q", r.Source, r.Kind, r.Text[f.Start:f.End]))
				}
			}
		}
		for i, l := range r.Labels {
			if !matched[i] {
				pii[l.Type].fn++
				if len(fpExamples["missed "+l.Type]) < 5 {
					fpExamples["missed "+l.Type] = append(fpExamples["missed "+l.Type], fmt.Sprintf("%q", r.Text))
				}
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| detector | TP | FP | FN | precision | recall |\n|---|---|---|---|---|---|\n")
	types := make([]string, 0, len(pii))
	for k := range pii {
		types = append(types, k)
	}
	sort.Strings(types)
	for _, k := range types {
		s := pii[k]
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %.4f | %.4f |\n", k, s.tp, s.fp, s.fn, s.precision(), s.recall())
	}
	fmt.Fprintf(&b, "| secret (gitleaks examples, per record) | %d | %d | %d | %.4f | %.4f |\n", secretAll.tp, secretAll.fp, secretAll.fn, secretAll.precision(), secretAll.recall())
	for id, s := range rules {
		if s.fn > 0 {
			missedRules = append(missedRules, fmt.Sprintf("%s (%d/%d)", id, s.fn, s.tp+s.fn))
		}
		if s.fp > 0 {
			fpRules = append(fpRules, fmt.Sprintf("%s (%d)", id, s.fp))
		}
	}
	sort.Strings(missedRules)
	sort.Strings(fpRules)
	full := 0
	for _, s := range rules {
		if s.fn == 0 && s.fp == 0 {
			full++
		}
	}
	fmt.Fprintf(&b, "\nhard-negative records with a secret finding: %d of %d\n", secretOnNegatives, negatives)
	fmt.Fprintf(&b, "gitleaks rules with examples: %d; all examples right: %d\n", len(rules), full)
	fmt.Fprintf(&b, "rules missing true-positive examples (missed/total): %s\n", strings.Join(missedRules, ", "))
	fmt.Fprintf(&b, "rules firing on their false-positive examples: %s\n", strings.Join(fpRules, ", "))
	t.Log(b.String())
	for k, v := range fpExamples {
		t.Logf("%s: %s", k, strings.Join(v, "; "))
	}
	for _, k := range validatedPII {
		s := pii[k]
		if s.tp+s.fn < 100 {
			t.Errorf("%s: only %d labelled values in the corpus", k, s.tp+s.fn)
		}
		if s.precision() < 0.98 || s.recall() < 0.98 {
			t.Errorf("%s: precision %.4f recall %.4f, want both >= 0.98", k, s.precision(), s.recall())
		}
	}
	// Regression floor for the secret rules (measured 2026-12-01; see docs/dlp.md).
	if len(rules) < 150 || secretAll.recall() < 0.90 {
		t.Errorf("gitleaks examples: %d rules, recall %.4f; want >= 150 rules and recall >= 0.90", len(rules), secretAll.recall())
	}
}

// TestWindowedRulesMatchWholeText: running rules only near their keywords,
// anchored at them, and on overlapping chunks finds what running every rule
// over the whole text finds: on gitleaks' examples separated by filler
// (matches land across window and chunk edges), on keyword-dense JSON with
// planted secrets, and on matches packed back to back behind long
// identifiers (the anchored rules' walk back over their prefix).
func TestWindowedRulesMatchWholeText(t *testing.T) {
	e := testEngine(t)
	var b strings.Builder
	i := 0
	for j, r := range loadCorpus(t) {
		if r.Source != "gitleaks-tp" || j%12 != 0 {
			continue
		}
		b.WriteString(r.Text)
		b.WriteString(strings.Repeat(" lorem ipsum dolor", 1+i%37))
		b.WriteString("\n")
		i++
	}
	var dense strings.Builder
	for k, rec := range strings.SplitAfter(string(benchJSON(48<<10)), "},") {
		dense.WriteString(rec)
		if k%7 == 0 {
			fmt.Fprintf(&dense, `{"api_key":"a8f5f1%02d7f44f4964e6c998dee827110c","auth_token": "Zm9vYmFy%04dYmF6cXV4MTIzNDU2Nzg5"},`, k%100, k)
		}
	}
	var packed strings.Builder
	for k := range 40 {
		fmt.Fprintf(&packed, "%s_secret=%08dQWxhZGRpbjpvcGVuIHNlc2FtZQ%s_token:'%06dx9f8e7d6c5b4a39281'", strings.Repeat("very_long_identifier", k%5), k, strings.Repeat("x", k%60), k)
	}
	for _, c := range []struct {
		name, text string
		min        int
	}{{"gitleaks examples", b.String(), 150}, {"dense json", dense.String(), 20}, {"packed", packed.String(), 30}} {
		t.Run(c.name, func(t *testing.T) {
			text := []byte(c.text)
			var got []Finding
			e.rules.scan(text, nil, &got)
			var want []Finding
			for _, r := range e.rules.rules {
				r.findIn(text, 0, len(text), 0, len(text), e.rules.global, &want)
			}
			key := func(f Finding) string { return fmt.Sprintf("%s@%d-%d", f.Rule, f.Start, f.End) }
			gotSet, wantSet := map[string]bool{}, map[string]bool{}
			for _, f := range got {
				gotSet[key(f)] = true
			}
			for _, f := range want {
				wantSet[key(f)] = true
			}
			missing, extra := 0, 0
			for _, f := range want {
				if !gotSet[key(f)] {
					if missing++; missing <= 5 {
						t.Errorf("windowed scan misses %s %q", key(f), text[f.Start:f.End])
					}
				}
			}
			for _, f := range got {
				if !wantSet[key(f)] {
					if extra++; extra <= 5 {
						t.Errorf("windowed scan adds %s %q", key(f), text[max(0, f.Start-30):f.End])
					}
				}
			}
			if len(want) < c.min || len(got) != len(want) {
				t.Errorf("%d findings windowed, %d whole (%d missing, %d extra), text %d bytes", len(got), len(want), missing, extra, len(text))
			}
		})
	}
}
