// The heavy tier in the console: a matplotlib chart and a DataFrame table rendered, and a bash shell
// at a step (a fork of the step, through shell commands). Runs with AGENTBOX_INTEGRATION=1 (root,
// runsc and the rootfs; the config then starts the server with the heavy tier on).
const { test, expect } = require("@playwright/test");
const path = require("path");

const KEY = process.env.AGENTBOX_UI_KEY;
const auth = { Authorization: "Bearer " + KEY };

test.skip(process.env.AGENTBOX_INTEGRATION !== "1", "heavy tier: set AGENTBOX_INTEGRATION=1 (needs root, runsc and the rootfs)");

test("heavy: chart, table and a bash shell at a step", async ({ page, request }) => {
  test.setTimeout(240_000);
  const s = await request.post("/v1/sessions", { headers: auth, data: { tier: "heavy" }, timeout: 120_000 });
  expect(s.status()).toBe(201);
  const { id } = await s.json();
  for (const code of [
    "import pandas as pd\ndf = pd.DataFrame({'n': range(4), 'sq': [i * i for i in range(4)]})\nopen('/home/user/marker.txt', 'w').write('step 1')\ndf",
    "import matplotlib.pyplot as plt\nplt.plot(df.n, df.sq)\nplt.title('squares')\nplt.show()",
  ]) {
    const r = await request.post(`/v1/sessions/${id}/run`, { headers: auth, data: { code }, timeout: 120_000 });
    expect(r.status()).toBe(200);
  }
  await page.goto("/healthz");
  await page.evaluate((k) => sessionStorage.setItem("agentbox.key", k), KEY);
  await page.goto(`/ui/s/${id}`);
  await page.locator("#step-1").click();
  const inspector = page.locator("article.inspector");
  await expect(inspector.locator("table.data").first()).toContainText("sq");
  await page.locator("#step-2").click();
  await expect(inspector.locator('figure[data-mime="image/png"] img.chart')).toBeVisible();
  await page.screenshot({ path: path.join(__dirname, "..", "test-results", "heavy-chart.png") });

  await page.locator("#step-1").click();
  await inspector.getByRole("button", { name: "Shell at step 1" }).click();
  const pane = page.locator("#shell-pane");
  await expect(pane).toHaveAttribute("data-ready", "1", { timeout: 120_000 });
  await page.locator(".xterm-helper-textarea").pressSequentially("cat /home/user/marker.txt; echo; echo shell-$((6*7))");
  await page.keyboard.press("Enter");
  await expect(page.locator(".xterm-rows")).toContainText("shell-42", { timeout: 60_000 });
  await expect(page.locator(".xterm-rows")).toContainText("step 1");
  await pane.screenshot({ path: path.join(__dirname, "..", "test-results", "heavy-shell.png") });
  await page.locator("#shell-keep").click();
  await expect(pane).toHaveAttribute("data-kept", /.+/);
  const kept = await pane.getAttribute("data-kept");
  await page.locator("#shell-close").click();
  // Kept: the fork outlives the shell.
  expect((await request.get(`/v1/sessions/${kept}`, { headers: auth })).status()).toBe(200);
  await request.delete(`/v1/sessions/${kept}`, { headers: auth });
  await request.delete(`/v1/sessions/${id}`, { headers: auth });
});
