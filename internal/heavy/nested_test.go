package heavy

import "testing"

// TestGVisorIsToldByItsKernelLog: gVisor's made-up kernel log is recognised; a Linux host's (the
// tail of a log that began at boot) and an empty or unreadable one are not.
func TestGVisorIsToldByItsKernelLog(t *testing.T) {
	for _, tt := range []struct {
		name string
		log  string
		want bool
	}{
		{"gVisor, as syslog(2) gives it", "<6>[   0.000000] Starting gVisor...\n<6>[   0.185373] Consulting tar man page...\n", true},
		{"gVisor, as dmesg prints it", "[    0.000000] Starting gVisor...\n[    0.113936] Adversarially training Redcode AI...\n", true},
		{"gVisor, longer uptime field", "[      0.000000] Starting gVisor...\n", true},
		{"Linux host's last messages", "<6>[30447.319373] veth1: entered promiscuous mode\n<6>[30447.5] Starting gVisor...\n", false},
		{"Linux boot", "[    0.000000] Linux version 6.1.0 (debian-kernel@lists.debian.org)\n", false},
		{"empty", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := isGVisorLog([]byte(tt.log)); got != tt.want {
				t.Fatalf("isGVisorLog(%q) = %v, want %v", tt.log, got, tt.want)
			}
		})
	}
	// This test runs on Linux or in gVisor; Installed must agree with what the log says.
	if underGVisor() {
		if err := Installed(Config{}); err != ErrNested {
			t.Fatalf("in gVisor, Installed = %v, want ErrNested", err)
		}
	}
}
