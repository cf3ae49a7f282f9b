// The chart frame: a sandboxed document (an opaque origin: no key, no API, no network by its CSP)
// that renders one plotly or vega spec its parent posts, loading the library it needs, and posts back
// its height.
"use strict";

function load(src) {
  return new Promise((ok, fail) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = ok;
    s.onerror = () => fail(new Error("could not load " + src));
    document.head.append(s);
  });
}

function report(err) {
  window.parent.postMessage({ height: document.documentElement.scrollHeight, error: err ? String(err) : undefined }, "*");
}

window.addEventListener("message", async (e) => {
  if (e.source !== window.parent || !e.data || !e.data.lib) return;
  const el = document.getElementById("chart");
  const { lib, spec } = e.data;
  try {
    if (lib === "plotly") {
      await load("vendor/plotly.min.js");
      // Plotly sizes itself to its container: give it the figure's height (plotly's default 450).
      el.style.height = ((spec.layout && spec.layout.height) || 450) + "px";
      await Plotly.newPlot(el, spec.data || [], Object.assign({ autosize: true }, spec.layout || {}), { displaylogo: false, responsive: true });
    } else {
      await load("vendor/vega.min.js");
      await load("vendor/vega-lite.min.js");
      await load("vendor/vega-embed.min.js");
      await vegaEmbed(el, spec, { actions: false, mode: lib === "vega-lite" ? "vega-lite" : "vega" });
    }
    el.dataset.rendered = lib;
    report();
  } catch (err) {
    el.className = "err";
    el.textContent = "could not render the " + lib + " chart: " + err;
    report(err);
  }
});
