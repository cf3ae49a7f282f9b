package api

// Host is one agentbox host of a fleet (`agentbox serve --cluster`), as GET /v1/hosts lists it.
type Host struct {
	ID string `json:"id"`
	// URL is the host's HTTP base URL (--advertise), which the other hosts forward requests to.
	URL string `json:"url"`
	// Tiers are the tiers the host takes placements for.
	Tiers  []Tier            `json:"tiers"`
	Labels map[string]string `json:"labels,omitempty"`
	// State is "active", "draining" (takes no placements, its sessions still answer) or "drained"
	// (draining and no session left).
	State    string       `json:"state"`
	Capacity HostCapacity `json:"capacity"`
	Load     HostLoad     `json:"load"`
	// ConfigSHA256 is the digest of the host's API keys and network ceiling; every host of a fleet
	// has the same one.
	ConfigSHA256 string `json:"config_sha256"`
	StartedAt    string `json:"started_at"`
	HeartbeatAt  string `json:"heartbeat_at"`
}

// HostCapacity is what a host takes through placement.
type HostCapacity struct {
	Runs     int `json:"runs"`     // one-shot runs at once
	Sessions int `json:"sessions"` // open sessions
	MemoryMB int `json:"memory_mb,omitempty"`
}

// HostLoad is what a host holds now.
type HostLoad struct {
	Runs         int `json:"runs"`
	Sessions     int `json:"sessions"`
	MemoryUsedMB int `json:"memory_used_mb"`
	RunsWaiting  int `json:"runs_waiting"`
	PoolReady    int `json:"pool_ready"`
}

// HostList is GET /v1/hosts. Self is the id of the host that answered.
type HostList struct {
	Self  string `json:"self"`
	Hosts []Host `json:"hosts"`
}

// Host states.
const (
	HostActive   = "active"
	HostDraining = "draining"
	HostDrained  = "drained"
)
