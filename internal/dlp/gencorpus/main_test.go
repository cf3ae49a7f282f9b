package main

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

func newGen(seed uint64) *gen { return &gen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))} }

// The corpus is reproducible from its seed, and every label covers the
// planted value's token: the value itself, or its encoding in the context.
func TestGeneratorIsDeterministicAndLabelsCoverValues(t *testing.T) {
	a := append(newGen(7).pii(40), newGen(7).negatives(30)...)
	b := append(newGen(7).pii(40), newGen(7).negatives(30)...)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same seed, different corpus")
	}
	labelled := 0
	for _, r := range a {
		switch r.Source {
		case "pii":
			if len(r.Labels) != 1 || r.Labels[0].Type != r.Kind {
				t.Fatalf("%s record without its label: %+v", r.Kind, r)
			}
			l := r.Labels[0]
			if l.Start < 0 || l.End > len(r.Text) || l.End-l.Start < 5 {
				t.Fatalf("label %+v outside %q", l, r.Text)
			}
			tok := r.Text[l.Start:l.End]
			if strings.ContainsAny(tok, "\n") && r.Kind != "private_key" {
				t.Fatalf("label spans more than the value: %q", tok)
			}
			labelled++
		default:
			if len(r.Labels) != 0 {
				t.Fatalf("%s record with labels: %+v", r.Source, r)
			}
		}
	}
	if labelled < 8*30 {
		t.Errorf("only %d labelled records", labelled)
	}
}

func TestValueGeneratorsCheckDigits(t *testing.T) {
	g := newGen(3)
	for range 200 {
		digits := func(s string) []int {
			var d []int
			for _, c := range s {
				if c >= '0' && c <= '9' {
					d = append(d, int(c-'0'))
				}
			}
			return d
		}
		d := digits(g.card(true))
		if luhnDigit(d[:len(d)-1]) != d[len(d)-1] {
			t.Fatalf("valid card fails Luhn: %v", d)
		}
		d = digits(g.card(false))
		if luhnDigit(d[:len(d)-1]) == d[len(d)-1] {
			t.Fatalf("invalid card passes Luhn: %v", d)
		}
		iban := strings.ReplaceAll(g.iban(true), " ", "")
		if mod97(iban[4:]+iban[:4]) != 1 {
			t.Fatalf("valid IBAN fails mod 97: %s", iban)
		}
		iban = strings.ReplaceAll(g.iban(false), " ", "")
		if mod97(iban[4:]+iban[:4]) == 1 {
			t.Fatalf("invalid IBAN passes mod 97: %s", iban)
		}
		s, _ := g.myNumber(true)
		d = digits(s)
		if myNumberCheck(d) != d[11] {
			t.Fatalf("valid My Number fails its check digit: %v", d)
		}
		s, _ = g.myNumber(false)
		d = digits(s)
		if myNumberCheck(d) == d[11] {
			t.Fatalf("invalid My Number passes its check digit: %v", d)
		}
	}
}
