// Playwright end-to-end tests of the web console against a real `agentbox serve` (scripts/ui-test.sh).
// The browser is Debian's chromium-headless-shell: no browser is downloaded.
const { defineConfig } = require("@playwright/test");
const path = require("path");
const os = require("os");
const fs = require("fs");

// The config is read by the runner and again by each worker, which inherit the runner's environment:
// the port and the state directory are chosen once, there.
if (!process.env.AGENTBOX_UI_PORT) process.env.AGENTBOX_UI_PORT = String(20000 + (process.pid % 20000));
if (!process.env.AGENTBOX_UI_STATE) process.env.AGENTBOX_UI_STATE = fs.mkdtempSync(path.join(os.tmpdir(), "agentbox-ui-"));
const port = Number(process.env.AGENTBOX_UI_PORT);
const key = "sk-console-e2e-0123456789abcdef";
const state = process.env.AGENTBOX_UI_STATE;
const keyFile = path.join(state, "keys");
fs.writeFileSync(keyFile, key + " admin audit\n", { mode: 0o600 });
// The heavy tier (gVisor) is on only for AGENTBOX_INTEGRATION=1, as for the Go integration tests; the
// server then fails to start, loudly, when runsc or the rootfs is missing.
const heavy = process.env.AGENTBOX_INTEGRATION === "1" ? "on" : "off";
const bin = process.env.AGENTBOX_BIN || path.join(__dirname, "..", "bin", "agentbox");

process.env.AGENTBOX_UI_KEY = key;
process.env.AGENTBOX_UI_URL = `http://127.0.0.1:${port}`;

module.exports = defineConfig({
  testDir: "tests",
  outputDir: "test-results/artifacts",
  timeout: 90_000,
  expect: { timeout: 20_000 },
  workers: 1,
  fullyParallel: false,
  reporter: [["list"]],
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    browserName: "chromium",
    headless: true,
    viewport: { width: 1280, height: 800 },
    launchOptions: { executablePath: process.env.CHROMIUM || "/usr/bin/chromium-headless-shell" },
    trace: "retain-on-failure",
  },
  webServer: {
    command: `"${bin}" serve --addr 127.0.0.1:${port} --api-key-file "${keyFile}" --state-dir "${path.join(state, "state")}" --heavy ${heavy} --heavy-pool 1`,
    url: `http://127.0.0.1:${port}/healthz`,
    reuseExistingServer: false,
    timeout: 180_000,
    // SIGTERM, not Playwright's default SIGKILL: the server shuts down and removes its sandboxes,
    // cgroups and mounts (a killed one leaves them for the next server on its state root to sweep).
    gracefulShutdown: { signal: "SIGTERM", timeout: 30_000 },
    stdout: "ignore",
    stderr: process.env.AGENTBOX_UI_DEBUG ? "pipe" : "ignore",
  },
});
