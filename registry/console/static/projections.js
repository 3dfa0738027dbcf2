"use strict";
// Refreshes the projections table every few seconds and draws lag and events per second
// over the last minutes from what it sampled (kept in this page only).
(function () {
  const live = document.getElementById("projections-live");
  if (!live) return;
  const EVERY_MS = 2000;
  const WINDOW_MS = 5 * 60 * 1000;
  const W = 300, H = 80, TOP = 6, BOTTOM = 2;
  const SVG = "http://www.w3.org/2000/svg";
  const samples = [];
  let shown = null;

  function take() {
    const table = document.getElementById("projections-table");
    if (!table) return;
    const now = Date.now();
    samples.push({ t: now, events: Number(table.dataset.events), lag: Number(table.dataset.lag) });
    while (samples.length && samples[0].t < now - WINDOW_MS) samples.shift();
    draw(now);
  }

  function draw(now) {
    const lag = samples.map((s) => ({ t: s.t, v: s.lag }));
    const rate = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = (samples[i].t - samples[i - 1].t) / 1000;
      if (dt > 0) rate.push({ t: samples[i].t, v: Math.max(0, samples[i].events - samples[i - 1].events) / dt });
    }
    chart(document.getElementById("chart-lag"), lag, now, "");
    chart(document.getElementById("chart-rate"), rate, now, "/s");
  }

  function chart(svg, points, now, unit) {
    if (!svg) return;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const max = Math.max(1, ...points.map((p) => p.v));
    const x = (t) => W - ((now - t) / WINDOW_MS) * W;
    const y = (v) => H - BOTTOM - (v / max) * (H - TOP - BOTTOM);
    const base = document.createElementNS(SVG, "line");
    base.setAttribute("x1", "0"); base.setAttribute("x2", String(W));
    base.setAttribute("y1", String(H - BOTTOM)); base.setAttribute("y2", String(H - BOTTOM));
    base.setAttribute("class", "axis");
    base.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(base);
    if (points.length > 1) {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" "));
      line.setAttribute("class", "series");
      line.setAttribute("vector-effect", "non-scaling-stroke");
      svg.appendChild(line);
    }
    const last = points.length ? points[points.length - 1].v : 0;
    const label = document.getElementById(`${svg.id}-now`);
    if (label) label.textContent = `now ${round(last)}${unit} · max ${round(max)}${unit} · last 5 min`;
  }

  function round(value) {
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  async function refresh() {
    try {
      const response = await window.consoleFetch(live.dataset.source);
      if (response) {
        const html = await response.text();
        if (html !== shown) {
          live.innerHTML = html;
          shown = html;
        }
        take();
      }
    } catch (error) {
      // the server is restarting or unreachable: keep the last table, try again
    } finally {
      window.setTimeout(refresh, EVERY_MS);
    }
  }

  take();
  window.setTimeout(refresh, EVERY_MS);
})();
