package egress

import (
	"crypto/x509"
	"encoding/asn1"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := loadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	t.Run("CA is a P-256 CA with critical basic constraints", func(t *testing.T) {
		c := a.cert
		if !c.IsCA || !c.BasicConstraintsValid || c.PublicKeyAlgorithm != x509.ECDSA || len(c.SubjectKeyId) == 0 {
			t.Fatalf("CA %+v", c)
		}
		critical := false
		for _, e := range c.Extensions {
			if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 19}) {
				critical = e.Critical
			}
		}
		if !critical {
			t.Fatal("basicConstraints is not critical")
		}
	})
	t.Run("the same CA is loaded on the next start", func(t *testing.T) {
		b, err := loadOrCreateCA(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !b.cert.Equal(a.cert) {
			t.Fatal("a second start made another CA")
		}
	})
	t.Run("leaf has SAN, AKI, ServerAuth, short validity and verifies", func(t *testing.T) {
		l, err := a.leaf("api.test")
		if err != nil {
			t.Fatal(err)
		}
		c := l.Leaf
		if len(c.DNSNames) != 1 || c.DNSNames[0] != "api.test" || string(c.AuthorityKeyId) != string(a.cert.SubjectKeyId) ||
			len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || c.IsCA ||
			time.Until(c.NotAfter) > 25*time.Hour {
			t.Fatalf("leaf %+v", c)
		}
		roots := x509.NewCertPool()
		roots.AddCert(a.cert)
		if _, err := c.Verify(x509.VerifyOptions{DNSName: "api.test", Roots: roots}); err != nil {
			t.Fatal(err)
		}
		again, _ := a.leaf("api.test")
		if again != l {
			t.Fatal("the leaf was not cached")
		}
	})
	t.Run("a key others can read is refused", func(t *testing.T) {
		if err := os.Chmod(filepath.Join(dir, CAKeyFile), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := loadOrCreateCA(dir); err == nil {
			t.Fatal("loaded a 0644 CA key")
		}
	})
	t.Run("a key without its certificate is refused, not replaced", func(t *testing.T) {
		d := t.TempDir()
		os.WriteFile(filepath.Join(d, CAKeyFile), []byte("x"), 0o600)
		if _, err := loadOrCreateCA(d); err == nil {
			t.Fatal("want an error")
		}
	})
}
