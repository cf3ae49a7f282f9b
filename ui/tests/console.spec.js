// End-to-end: the console against a real server (playwright.config.js starts it). The waits are on
// page state (locators, expect), never on time.
const { test, expect } = require("@playwright/test");
const fs = require("fs");
const path = require("path");

const KEY = process.env.AGENTBOX_UI_KEY;
const shots = path.join(__dirname, "..", "test-results");
fs.mkdirSync(shots, { recursive: true });

// The four cells: state, a file and a total, a chart (SVG and plotly, display()ed on nano), an error.
const CELLS = [
  "x = 1\nrows = [{'n': i, 'sq': i * i} for i in range(5)]",
  "total = sum(r['sq'] for r in rows)\nwith open('/home/user/squares.csv', 'w') as f:\n    f.write('n,sq\\n' + ''.join(f\"{r['n']},{r['sq']}\\n\" for r in rows))\nprint('total', total)",
  "bars = ''.join(f'<rect x=\"{i*22}\" y=\"{100-r[\"sq\"]*5}\" width=\"20\" height=\"{r[\"sq\"]*5}\" fill=\"steelblue\"/>' for i, r in enumerate(rows))\n" +
    "display({'image/svg+xml': f'<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"120\" height=\"100\">{bars}</svg>', 'text/plain': 'squares chart'}, raw=True)\n" +
    "display({'application/vnd.plotly.v1+json': {'data': [{'type': 'bar', 'x': [r['n'] for r in rows], 'y': [r['sq'] for r in rows]}], 'layout': {'title': {'text': 'squares'}}}}, raw=True)",
  "1 / 0",
];

// watch collects the page's console errors and uncaught exceptions (the tests fail on any). One message
// is Playwright's own: it injects a script into every frame, and Chromium reports that it could not run
// in a sandboxed guest-HTML frame (a bare <iframe sandbox srcdoc> in an empty page logs the same).
const playwrightInjection = /^Blocked script execution in 'about:srcdoc' because the document's frame is sandboxed and the 'allow-scripts' permission is not set\.$/;
function watch(page) {
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error" && !playwrightInjection.test(m.text())) errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  return errors;
}

// useKey stores the key in the tab's sessionStorage, as the key dialog does (an init script would also
// run in the sandboxed output frames, which may not touch storage or run scripts).
async function useKey(page, key) {
  await page.goto("/healthz");
  await page.evaluate((k) => sessionStorage.setItem("agentbox.key", k), key);
}

async function newSession(request) {
  const auth = { Authorization: "Bearer " + KEY };
  const s = await request.post("/v1/sessions", { headers: auth, data: { tier: "nano" } });
  expect(s.status()).toBe(201);
  const { id } = await s.json();
  for (const code of CELLS) {
    const r = await request.post(`/v1/sessions/${id}/run`, { headers: auth, data: { code } });
    expect(r.status()).toBe(200);
  }
  return id;
}

test("timeline, inspector, chart, file, shell at a step, rewind", async ({ page, request, browser }) => {
  console.log("browser", browser.version());
  const errors = watch(page);
  const id = await newSession(request);
  await useKey(page, KEY);
  await page.goto(`/ui/s/${id}`);

  // Four cells on the timeline (after step 0, the start), the error coloured as one.
  const timeline = page.getByRole("listbox");
  await expect(timeline.locator('.step[data-step]')).toHaveCount(5);
  await expect(timeline.locator(".step .kind", { hasText: "cell" })).toHaveCount(4);
  await expect(page.locator("#step-4")).toHaveClass(/outcome-error/);
  await expect(page.locator("#step-1 .kw, #step-1 .num").first()).toBeVisible(); // highlighted code

  const perf = await page.evaluate(() => {
    const paint = performance.getEntriesByType("paint").map((p) => [p.name, Math.round(p.startTime)]);
    const nav = performance.getEntriesByType("navigation")[0];
    const res = performance.getEntriesByType("resource");
    const bytes = (nav ? nav.transferSize : 0) + res.reduce((n, r) => n + (r.transferSize || 0), 0);
    return { paint: Object.fromEntries(paint), weightKiB: Math.round(bytes / 1024), resources: res.length + 1 };
  });
  console.log(`first paint ${perf.paint["first-paint"]} ms, first contentful paint ${perf.paint["first-contentful-paint"]} ms, page weight ${perf.weightKiB} KiB in ${perf.resources} requests (no charts)`);
  fs.writeFileSync(path.join(shots, "perf.json"), JSON.stringify(perf, null, 2));

  // Keyboard: focus the timeline, move down to step 2, inspect it with Enter.
  await timeline.focus();
  await page.keyboard.press("Home");
  await expect(page.locator("#step-0")).toHaveAttribute("aria-selected", "true");
  await page.keyboard.press("ArrowDown");
  await page.keyboard.press("j");
  await expect(page.locator("#step-2")).toHaveAttribute("aria-selected", "true");
  await page.keyboard.press("Enter");
  const inspector = page.locator("article.inspector");
  await expect(inspector).toHaveAttribute("data-step", "2");
  // Step 2's variables.
  const vars = inspector.locator("table.variables");
  await expect(vars.locator("tr", { hasText: "total" })).toContainText("30");
  await expect(vars.locator("tr", { hasText: "rows" })).toContainText("list");
  await expect(inspector.locator("pre.stdout")).toContainText("total 30");

  // The file step 2 wrote, opened from the file tree.
  const files = page.locator("#files");
  await files.getByRole("link", { name: "home/", exact: true }).click();
  await files.getByRole("link", { name: "user/", exact: true }).click();
  await files.getByRole("link", { name: "/home/user/squares.csv", exact: true }).click();
  await expect(page.locator(".file-view table.csv")).toContainText("sq");
  await expect(page.locator(".file-view table.csv tr")).toHaveCount(6);

  // The chart of step 3: the SVG image and the plotly chart, rendered in its sandboxed frame.
  await page.locator("#step-3").click();
  await expect(inspector).toHaveAttribute("data-step", "3");
  await expect(inspector.locator('img.chart[alt="squares chart"]')).toBeVisible();
  const frame = inspector.locator("iframe.chart-frame");
  await expect(frame).toHaveAttribute("data-rendered", "1");
  await expect(page.frameLocator("iframe.chart-frame").locator(".main-svg").first()).toBeVisible();
  await page.screenshot({ path: path.join(shots, "inspector-chart.png") });
  // Step 4's error and traceback.
  await page.keyboard.press("End"); // focus is on the row clicked, inside the listbox
  await expect(inspector).toHaveAttribute("data-step", "4");
  await expect(inspector.locator(".error-box")).toContainText("ZeroDivisionError");
  await expect(inspector.locator(".traceback")).toContainText("Traceback");

  // A shell at step 2: a fork of that step; a line runs there and sees step 2's state.
  await page.locator("#step-2").click();
  await expect(inspector).toHaveAttribute("data-step", "2");
  await inspector.getByRole("button", { name: "Shell at step 2" }).click();
  const pane = page.locator("#shell-pane");
  await expect(pane).toHaveAttribute("data-ready", "1");
  const forkID = await pane.getAttribute("data-session");
  expect(forkID).not.toBe(id);
  await page.locator(".xterm-helper-textarea").pressSequentially("print('from fork', total + x)");
  await page.keyboard.press("Enter");
  await expect(page.locator(".xterm-rows")).toContainText("from fork 31");
  await page.screenshot({ path: path.join(shots, "shell.png") });
  await page.locator("#shell-close").click();
  await expect(pane).toBeHidden();
  // Closing discarded the fork.
  await expect.poll(async () => (await request.get(`/v1/sessions/${forkID}`, { headers: { Authorization: "Bearer " + KEY } })).status()).toBe(404);

  // Rewind to step 2: steps 3 and 4 become an abandoned branch beside the live line.
  page.once("dialog", (d) => d.accept());
  await inspector.getByRole("button", { name: "Rewind here" }).click();
  await expect(timeline.locator(".step.abandoned")).toHaveCount(2);
  await expect(timeline.locator('.step.abandoned[data-lane="1"]')).toHaveCount(2);
  await expect(timeline.locator(".step.current")).toContainText("rewound to step 2");
  await timeline.screenshot({ path: path.join(shots, "timeline.png") });
  await page.screenshot({ path: path.join(shots, "session-1280.png"), fullPage: true });

  // Narrow window: still readable (no page-wide horizontal scrolling).
  await page.setViewportSize({ width: 420, height: 800 });
  await expect(timeline).toBeVisible();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  expect(overflow).toBeLessThanOrEqual(1);
  await page.screenshot({ path: path.join(shots, "session-narrow.png"), fullPage: true });

  // Fork step 1 as a new session: its timeline starts with the fork, the parent's shows the branch.
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.locator("#step-1").click();
  await expect(inspector).toHaveAttribute("data-step", "1");
  await inspector.getByRole("button", { name: "Fork as new session" }).click();
  await expect(page).not.toHaveURL(new RegExp(`/ui/s/${id}$`));
  await expect(page.locator("#step-0")).toContainText(`forked from ${id} step 1`);
  const fork = page.url().split("/").pop();
  await page.goto(`/ui/s/${id}`);
  await expect(page.locator("#step-1")).toContainText(`forked as ${fork}`);

  expect(errors).toEqual([]);
});

test("run panel streams output and renders the result; upload", async ({ page, request }) => {
  const errors = watch(page);
  const auth = { Authorization: "Bearer " + KEY };
  const s = await request.post("/v1/sessions", { headers: auth, data: { tier: "nano" } });
  const { id } = await s.json();
  await useKey(page, KEY);
  await page.goto(`/ui/s/${id}`);
  await page.locator("#run-code").fill("import json\nfor i in range(3):\n    print('line', i)\ndisplay({'text/html': '<table><tr><td>cell</td></tr></table>'}, raw=True)\ndisplay({'application/json': {'a': [1, 2]}}, raw=True)\n" +
    "display({'application/vnd.vegalite.v5+json': {'mark': 'bar', 'data': {'values': [{'k': 'a', 'v': 3}, {'k': 'b', 'v': 5}]}, 'encoding': {'x': {'field': 'k', 'type': 'nominal'}, 'y': {'field': 'v', 'type': 'quantitative'}}}}, raw=True)");
  await page.getByRole("button", { name: "Run" }).click();
  const out = page.locator("#run-output");
  await expect(out.locator("pre.stdout")).toContainText("line 2");
  await expect(out.locator("iframe.html-output")).toHaveAttribute("sandbox", "");
  await expect(out.locator(".json-tree .json-key").first()).toHaveText("a");
  await expect(page.locator("#run-status")).toHaveText("done");
  // The vega-lite chart, rendered by vega-embed in the sandboxed chart frame.
  await expect(out.locator('iframe.chart-frame[data-lib="vega-lite"]')).toHaveAttribute("data-rendered", "1");
  await expect(out.frameLocator("iframe.chart-frame").locator("svg.marks, canvas.marks").first()).toBeVisible();
  // The new step shows on the timeline.
  await expect(page.locator(".timeline .step .kind", { hasText: "cell" })).toHaveCount(1);

  // Upload a file and open it.
  await page.locator('input[type="file"]').setInputFiles({ name: "hello.txt", mimeType: "text/plain", buffer: Buffer.from("hi from the browser") });
  await page.locator("form.upload button").click();
  await page.locator("#files").getByRole("link", { name: "/home/user/hello.txt", exact: true }).click();
  await expect(page.locator(".file-view pre.file-text")).toHaveText("hi from the browser");
  // Download: fetched with the key, saved under the file's name.
  const [download] = await Promise.all([page.waitForEvent("download"), page.locator(".file-view").getByRole("link", { name: "Download" }).click()]);
  expect(download.suggestedFilename()).toBe("hello.txt");
  expect(fs.readFileSync(await download.path(), "utf8")).toBe("hi from the browser");
  expect(errors).toEqual([]);
});

test("sessions list filters; audit page searches and reports", async ({ page, request }) => {
  const errors = watch(page);
  const id = (await (await request.post("/v1/sessions", { headers: { Authorization: "Bearer " + KEY }, data: { tier: "nano" } })).json()).id;
  await useKey(page, KEY);
  await page.goto("/ui/");
  await expect(page.getByRole("link", { name: id })).toBeVisible();
  await page.getByRole("searchbox", { name: "Search sessions" }).fill(id);
  await expect(page.locator("#session-rows tr")).toHaveCount(1);
  await page.getByRole("searchbox", { name: "Search sessions" }).fill("no-such-session");
  await expect(page.locator("#session-rows")).toContainText("No session matches.");

  // Narrow: the list scrolls in its box, the page does not.
  await page.setViewportSize({ width: 420, height: 800 });
  expect(await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)).toBeLessThanOrEqual(1);
  await page.setViewportSize({ width: 1280, height: 800 });

  await page.getByRole("link", { name: "Audit" }).click();
  await expect(page.locator("table.audit-events")).toBeVisible();
  await page.getByLabel("Type").selectOption("session.create");
  await expect(page.locator("table.audit-events tbody tr").first()).toContainText("session.create");
  await page.getByRole("button", { name: "Show report" }).click();
  await expect(page.locator(".report")).toContainText("daily report");
  await page.screenshot({ path: path.join(shots, "audit.png"), fullPage: true });
  expect(errors).toEqual([]);
});

test("unauthorised access is refused and the console asks for a key", async ({ page, request }) => {
  // The API and the console's fragments refuse a request without the key.
  expect((await request.get("/v1/sessions")).status()).toBe(401);
  expect((await request.get("/ui/f/sessions")).status()).toBe(401);
  // A cross-site write is refused even with a key.
  const cross = await request.post("/ui/f/sessions", { headers: { Authorization: "Bearer " + KEY, Origin: "http://evil.example" }, form: { tier: "nano" } });
  expect(cross.status()).toBe(403);

  await page.goto("/ui/");
  const dialog = page.getByRole("dialog", { name: "API key" });
  await expect(dialog).toBeVisible();
  await expect(page.locator("#main .error-box")).toContainText("401");
  await page.getByRole("textbox", { name: "Key" }).fill("sk-wrong-key-0123456789abcdef");
  await page.getByRole("button", { name: "Use key" }).click();
  await expect(dialog).toBeVisible(); // refused again: asked again
  await page.getByRole("textbox", { name: "Key" }).fill(KEY);
  await page.getByRole("button", { name: "Use key" }).click();
  await expect(dialog).toBeHidden();
  await expect(page.locator("table.list")).toBeVisible();
  // The key lives in this tab's sessionStorage only.
  expect(await page.evaluate(() => localStorage.length)).toBe(0);
  expect(await page.evaluate(() => sessionStorage.getItem("agentbox.key"))).toBe(KEY);
});
