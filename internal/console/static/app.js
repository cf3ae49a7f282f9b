// The agentbox console's own script: the API key (sessionStorage, sent as a bearer token), htmx
// settings, the streamed run panel, the timeline's keyboard navigation, chart frames, downloads and
// the shell (xterm.js over a websocket, loaded only when a shell opens).
"use strict";

const KEY = "agentbox.key";
const CONSOLE_HEADER = "X-Agentbox-Console";

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

function headers(extra) {
  const h = Object.assign({ [CONSOLE_HEADER]: "1" }, extra || {});
  const k = apiKey();
  if (k) h["Authorization"] = "Bearer " + k;
  return h;
}

// htmx: no eval, no injected styles (the CSP forbids neither, but the console needs neither), and
// error answers are swapped in too: they are the console's own fragments saying what went wrong.
htmx.config.allowEval = false;
htmx.config.includeIndicatorStyles = false;
htmx.config.historyEnabled = false;
htmx.config.responseHandling = [
  { code: "204", swap: false },
  { code: "[23]..", swap: true },
  { code: "[45]..", swap: true, error: true },
];

document.body.addEventListener("htmx:configRequest", (e) => {
  Object.assign(e.detail.headers, headers());
});

document.body.addEventListener("htmx:responseError", (e) => {
  if (e.detail.xhr.status === 401) askKey("This server needs an API key.");
});

document.body.addEventListener("htmx:afterSettle", (e) => {
  initFrames(e.detail.elt);
  restoreSelection();
});

// --- the key dialog ---
const dialog = document.getElementById("key-dialog");
function askKey(why) {
  document.getElementById("key-error").textContent = why || "";
  if (!dialog.open) dialog.showModal();
  document.getElementById("key-input").focus();
}
document.getElementById("key-button").addEventListener("click", () => askKey(""));
document.getElementById("key-form").addEventListener("submit", () => {
  sessionStorage.setItem(KEY, document.getElementById("key-input").value.trim());
  document.getElementById("key-input").value = "";
  htmx.trigger(document.body, "key-changed");
});
document.getElementById("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  dialog.close();
  htmx.trigger(document.body, "key-changed");
});

// --- the run panel: a streamed run, its events rendered as they come ---
document.addEventListener("submit", (e) => {
  if (e.target.id !== "run-form") return;
  e.preventDefault();
  runCode(e.target);
});
document.addEventListener("keydown", (e) => {
  if (e.target.id === "run-code" && e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    runCode(e.target.form);
  }
});

async function runCode(form) {
  const id = form.dataset.session;
  const out = document.getElementById("run-output");
  const status = document.getElementById("run-status");
  const button = document.getElementById("run-button");
  out.textContent = "";
  const live = document.createElement("pre");
  live.className = "live";
  const outputs = document.createElement("div");
  outputs.className = "outputs";
  out.append(live, outputs);
  status.textContent = "running…";
  button.disabled = true;
  try {
    const resp = await fetch("/ui/f/sessions/" + encodeURIComponent(id) + "/run", {
      method: "POST",
      headers: headers({ "Accept": "text/event-stream", "Content-Type": "application/x-www-form-urlencoded" }),
      body: new URLSearchParams({ code: form.elements.code.value }),
    });
    if (!resp.ok) {
      out.innerHTML = await resp.text(); // the console's own error fragment
      if (resp.status === 401) askKey("This server needs an API key.");
      status.textContent = "refused";
      return;
    }
    await readEvents(resp.body, (event, data) => {
      switch (event) {
        case "stdout":
        case "stderr": {
          const span = document.createElement("span");
          span.className = event;
          span.textContent = data.text;
          live.append(span);
          break;
        }
        case "note":
          status.textContent = data.text;
          break;
        case "html":
          outputs.insertAdjacentHTML("beforeend", data.html); // rendered and escaped by the console
          initFrames(outputs);
          break;
        case "result":
        case "error":
          out.innerHTML = data.html;
          initFrames(out);
          status.textContent = event === "result" ? "done" : "failed";
          break;
      }
    });
  } catch (err) {
    status.textContent = "failed: " + err.message;
  } finally {
    button.disabled = false;
    htmx.trigger(document.body, "session-changed");
  }
}

// readEvents parses a server-sent-event stream from a fetch body.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) onEvent(event, JSON.parse(data));
    }
  }
}

// --- the timeline: a listbox, navigated with the keyboard ---
let selectedStep = null;

function timelineRows() { return Array.from(document.querySelectorAll(".timeline .step")); }

function selectRow(row, inspect) {
  if (!row) return;
  const list = row.closest(".timeline");
  for (const r of timelineRows()) r.setAttribute("aria-selected", r === row ? "true" : "false");
  list.setAttribute("aria-activedescendant", row.id);
  selectedStep = row.dataset.step;
  row.scrollIntoView({ block: "nearest" });
  if (inspect) htmx.trigger(row, "inspect");
}

function restoreSelection() {
  if (selectedStep === null) return;
  const row = document.getElementById("step-" + selectedStep);
  if (row && row.getAttribute("aria-selected") !== "true") {
    for (const r of timelineRows()) r.setAttribute("aria-selected", r === row ? "true" : "false");
    row.closest(".timeline").setAttribute("aria-activedescendant", row.id);
  }
}

document.addEventListener("click", (e) => {
  const row = e.target.closest(".timeline .step");
  if (row && !e.target.closest("a")) selectRow(row, false); // htmx's click trigger inspects it
});

document.addEventListener("keydown", (e) => {
  const list = e.target.closest && e.target.closest(".timeline");
  if (!list) return;
  const rows = timelineRows();
  if (rows.length === 0) return;
  const cur = rows.findIndex((r) => r.getAttribute("aria-selected") === "true");
  let next = null;
  switch (e.key) {
    case "ArrowDown": case "j": next = rows[Math.min(cur + 1, rows.length - 1)]; break;
    case "ArrowUp": case "k": next = rows[Math.max(cur - 1, 0)]; break;
    case "Home": next = rows[0]; break;
    case "End": next = rows[rows.length - 1]; break;
    case "Enter": case " ":
      if (cur >= 0) { e.preventDefault(); htmx.trigger(rows[cur], "inspect"); }
      return;
    case "s":
      if (cur >= 0) { e.preventDefault(); openShell(rows[cur].dataset.step); }
      return;
    default: return;
  }
  e.preventDefault();
  selectRow(next, true);
});

// --- chart frames: plotly and vega run in a sandboxed frame, given the spec by message ---
function initFrames(root) {
  if (!root || !root.querySelectorAll) return;
  for (const f of root.querySelectorAll("iframe.chart-frame:not([data-ready])")) {
    f.dataset.ready = "1";
    const send = () => f.contentWindow.postMessage({ lib: f.dataset.lib, spec: JSON.parse(f.dataset.spec) }, "*");
    f.addEventListener("load", send, { once: true });
  }
}
window.addEventListener("message", (e) => {
  for (const f of document.querySelectorAll("iframe.chart-frame")) {
    if (f.contentWindow === e.source && e.data && typeof e.data.height === "number") {
      f.style.height = Math.min(Math.max(e.data.height, 100), 2000) + "px";
      f.dataset.rendered = e.data.error ? "error" : "1";
      if (e.data.error) f.title = e.data.error;
    }
  }
});

// --- downloads: fetched with the key, saved from a blob ---
document.addEventListener("click", async (e) => {
  const a = e.target.closest("a[data-download]");
  if (!a) return;
  e.preventDefault();
  const resp = await fetch(a.dataset.download, { headers: headers() });
  if (!resp.ok) { if (resp.status === 401) askKey("This server needs an API key."); return; }
  const url = URL.createObjectURL(await resp.blob());
  const save = document.createElement("a");
  save.href = url;
  save.download = (a.dataset.name || "download").split("/").pop();
  document.body.append(save);
  save.click();
  save.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
});

// --- the shell at a step ---
let shell = null; // {ws, term, session}

document.addEventListener("click", (e) => {
  const b = e.target.closest("[data-shell-step]");
  if (b) openShell(b.dataset.shellStep);
});

function loadOnce(tag, attrs) {
  const sel = tag === "script" ? `script[src="${attrs.src}"]` : `link[href="${attrs.href}"]`;
  const have = document.querySelector(sel);
  if (have) return have._loaded;
  const el = document.createElement(tag);
  Object.assign(el, attrs);
  el._loaded = new Promise((ok, fail) => { el.onload = ok; el.onerror = () => fail(new Error("could not load " + (attrs.src || attrs.href))); });
  document.head.append(el);
  return el._loaded;
}

async function openShell(step) {
  const section = document.querySelector(".session");
  if (!section) return;
  closeShell();
  await Promise.all([
    loadOnce("link", { rel: "stylesheet", href: "/ui/static/vendor/xterm.css" }),
    loadOnce("script", { src: "/ui/static/vendor/xterm.js" }),
  ]);
  const pane = document.getElementById("shell-pane");
  const status = document.getElementById("shell-status");
  pane.hidden = false;
  document.getElementById("shell-title").textContent = "Shell at step " + step;
  status.textContent = "forking step " + step + "…";
  const term = new Terminal({ convertEol: false, rows: 14, fontSize: 13, cursorBlink: true });
  const el = document.getElementById("shell-term");
  el.textContent = "";
  term.open(el);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ui/ws/sessions/${encodeURIComponent(section.dataset.session)}/shell?step=${encodeURIComponent(step)}`);
  shell = { ws, term, session: null, line: "" };
  const me = shell;
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", key: apiKey() }));
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    switch (msg.type) {
      case "ready":
        me.session = msg.session;
        pane.dataset.session = msg.session;
        pane.dataset.ready = "1";
        status.textContent = `fork ${msg.session} (${msg.tier}); closing the shell discards it unless kept`;
        term.write(msg.data || "");
        if (msg.prompt) term.write(msg.prompt);
        term.focus();
        break;
      case "output": term.write(msg.data); break;
      case "prompt": term.write(msg.prompt); break;
      case "kept":
        status.innerHTML = "";
        status.append("kept as session ");
        const a = document.createElement("a");
        a.href = "/ui/s/" + encodeURIComponent(msg.session);
        a.textContent = msg.session;
        status.append(a);
        pane.dataset.kept = msg.session;
        break;
      case "error": term.write("\r\n\x1b[31m" + msg.data + "\x1b[0m\r\n"); status.textContent = msg.data; break;
    }
  };
  ws.onclose = () => { if (shell === me) status.textContent += " · shell closed"; };
  term.onData((data) => {
    for (const ch of data) {
      if (ch === "\r") {
        term.write("\r\n");
        ws.send(JSON.stringify({ type: "line", data: me.line }));
        me.line = "";
      } else if (ch === "\x7f" || ch === "\b") {
        if (me.line.length > 0) { me.line = me.line.slice(0, -1); term.write("\b \b"); }
      } else if (ch === "\x03") {
        me.line = ""; term.write("^C\r\n");
        ws.send(JSON.stringify({ type: "interrupt" }));
      } else if (ch >= " " || ch === "\t") {
        me.line += ch; term.write(ch);
      }
    }
  });
}

function closeShell() {
  if (!shell) return;
  shell.ws.close(1000);
  shell.term.dispose();
  shell = null;
  const pane = document.getElementById("shell-pane");
  if (pane) { pane.hidden = true; delete pane.dataset.ready; delete pane.dataset.kept; }
}

document.addEventListener("click", (e) => {
  if (e.target.id === "shell-close") closeShell();
  if (e.target.id === "shell-keep" && shell) shell.ws.send(JSON.stringify({ type: "keep" }));
});
