// statelab dashboard: renders the snapshots the dashboard server streams (SSE) and relays buttons.
// No libraries; every text goes in through textContent, never as HTML.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const STORE_NAMES = { postgres: "PostgreSQL", redis: "Redis", s3: "S3 (SeaweedFS)" };
const STATE_ICON = { ready: "●", draining: "◐", restarting: "↻", crashed: "✗", stopped: "■" };
const COLORS = { rps: "#0072B2", eps: "#D55E00", marker: "#555555" };
let last = null;
let busy = false;

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (Math.abs(n) >= 100) return Math.round(n).toLocaleString("en");
  return String(Math.round(n * (Math.abs(n) >= 10 ? 10 : 100)) / (Math.abs(n) >= 10 ? 10 : 100));
}

// --- topology ------------------------------------------------------------------------------

function instanceCard(inst) {
  const st = inst.stats || {};
  const card = el("div", { class: `node instance state-${inst.state}`, "data-id": inst.id,
                           "data-state": inst.state, "data-generation": inst.generation });
  card.append(
    el("div", { class: "node-title" }, inst.id),
    el("div", {}, el("span", { class: "state" }, `${STATE_ICON[inst.state] || "?"} ${inst.state}`),
       " ", el("span", { class: "generation" }, `gen ${inst.generation}`)),
    el("div", { class: "big" }, el("span", { class: "rps" }, fmt(inst.rps)), " ", el("small", {}, "req/s")),
    el("div", { class: "kv" }, "active ", el("b", { class: "active" }, fmt(inst.active)),
       " · errors ", el("b", { class: "errors" }, fmt(inst.errors))),
    el("div", { class: "sessions" }, "sessions in memory ",
       el("b", { class: "sessions-in-memory" }, inst.stats ? fmt(st.sessions_in_memory || 0) : "–")),
  );
  const hits = st.cache_hits, misses = st.cache_misses;
  const total = (hits || 0) + (misses || 0);
  if (total > 0) {
    card.append(el("div", { class: "kv" }, "cache hits ",
                   el("b", {}, `${Math.round(100 * (hits || 0) / total)}%`)));
  }
  if (inst.db_qps !== null && inst.db_qps !== undefined) {
    card.append(el("div", { class: "kv" }, "db queries/s ", el("b", {}, fmt(inst.db_qps))));
  }
  if (st.local_files) card.append(el("div", { class: "kv" }, "files on local disk ", el("b", {}, fmt(st.local_files))));
  card.append(el("div", { class: "url" }, `pid ${inst.pid ?? "–"} · ${inst.url}`));
  if (!inst.stats) card.append(el("div", { class: "kv" }, "(no /stats answer)"));
  return card;
}

function renderTopology(s) {
  $("app-name").textContent = s.app || "?";
  $("policy-name").textContent = s.policy || "?";
  $("lb-name").textContent = s.lb || "?";
  $("balancer-url").textContent = s.balancer_url || "";
  $("total-rps").textContent = fmt(s.totals ? s.totals.rps : 0);
  $("total-eps").textContent = fmt(s.totals ? s.totals.eps : 0);
  $("total-active").textContent = fmt(s.totals ? s.totals.active : 0);
  $("instances").replaceChildren(...s.instances.map(instanceCard));
  const present = Object.fromEntries((s.stores || []).map(([name, url]) => [name, url]));
  const stores = ["postgres", "redis", "s3"].map((name) => {
    const used = name in present;
    return el("div", { class: `node store${used ? "" : " unused"}`, "data-store": name },
      el("div", { class: "node-title" }, STORE_NAMES[name]),
      el("div", { class: "url" }, used ? present[name] : `not used by the ${s.app || "?"} app`));
  });
  $("stores").replaceChildren(...stores);
  drawWires();
}

function drawWires() {
  const box = $("topology").getBoundingClientRect();
  const wires = $("wires");
  wires.replaceChildren();
  const mid = (r, top) => [r.left + r.width / 2 - box.left, (top ? r.top : r.bottom) - box.top];
  const b = $("balancer").getBoundingClientRect();
  const line = (a, z, dash) => wires.append(svg("line", { x1: a[0], y1: a[1], x2: z[0], y2: z[1],
    stroke: "#666", "stroke-width": 2, "stroke-dasharray": dash || "" }));
  const insts = [...$("instances").children];
  for (const card of insts) line(mid(b, false), mid(card.getBoundingClientRect(), true));
  for (const store of $("stores").children) {
    if (store.classList.contains("unused")) continue;
    for (const card of insts) line(mid(card.getBoundingClientRect(), false), mid(store.getBoundingClientRect(), true), "5 4");
  }
}

// --- timeline ------------------------------------------------------------------------------

function niceMax(v) {
  if (!(v > 0)) return 1;
  const mag = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= v) return m * mag;
  return 10 * mag;
}

const INSTANCE_STYLES = [["#56B4E9", ""], ["#009E73", "8 4"], ["#E69F00", "3 4"], ["#CC79A7", "12 4 3 4"],
                         ["#000000", "2 6"]];

// Draw a rolling line chart: series = [{key, label, get(h), color, dash, width}], history on the lab clock.
function lineChart(chart, hist, series, events) {
  chart.replaceChildren();
  const W = 900, H = 300, L = 60, R = 150, T = 58, B = 40, pw = W - L - R, ph = H - T - B;
  const tEnd = hist.length ? hist[hist.length - 1].t : 0;
  const span = Math.max(60, hist.length ? tEnd - hist[0].t : 60);
  const t0 = tEnd - span;
  const values = hist.flatMap((h) => series.map((sr) => sr.get(h) || 0));
  const top = niceMax(Math.max(1, ...values));
  const x = (t) => L + pw * (t - t0) / span;
  const y = (v) => T + ph * (1 - Math.min(v, top) / top);
  for (let i = 0; i <= 4; i++) {
    const v = top * i / 4;
    chart.append(svg("line", { x1: L, x2: L + pw, y1: y(v), y2: y(v), stroke: "#ddd" }));
    chart.append(svg("text", { x: L - 8, y: y(v) + 5, "text-anchor": "end" }, fmt(v)));
  }
  chart.append(svg("line", { x1: L, x2: L + pw, y1: T + ph, y2: T + ph, stroke: "#000", "stroke-width": 1.5 }));
  for (let k = 0; k <= 6; k++) {
    const t = t0 + span * k / 6;
    chart.append(svg("text", { x: x(t), y: T + ph + 22, "text-anchor": "middle" }, `${Math.round(t - tEnd)} s`));
  }
  // events: numbered as in the list below; events closer than a tag's width share one marker
  const clusters = [];
  events.forEach((ev, i) => {
    if (ev.t < t0) return;
    const last = clusters[clusters.length - 1];
    if (last && x(ev.t) - x(last.t) < 30) { last.to = i + 1; last.text.push(`${i + 1}. ${ev.target} ${ev.kind}`); }
    else clusters.push({ t: ev.t, from: i + 1, to: i + 1, text: [`${i + 1}. ${ev.target} ${ev.kind}`] });
  });
  for (const c of clusters) {
    const label = c.from === c.to ? `${c.from}` : `${c.from}–${c.to}`;
    const w = 10 + 9 * label.length;
    const g = svg("g", { class: "event" });
    g.append(svg("title", {}, c.text.join("\n")),
             svg("line", { x1: x(c.t), x2: x(c.t), y1: T, y2: T + ph, stroke: "#555555", "stroke-dasharray": "4 4" }),
             svg("rect", { x: x(c.t) - w / 2, y: T - 20, width: w, height: 19, rx: 4, fill: "#333333" }),
             svg("text", { x: x(c.t), y: T - 5, "text-anchor": "middle", fill: "#ffffff", "font-size": 13,
                           "font-weight": "bold" }, label));
    chart.append(g);
  }
  let legendX = L;
  const labelYs = [];
  for (const sr of series) {
    const pts = hist.filter((h) => h.t >= t0 && sr.get(h) !== null && sr.get(h) !== undefined)
      .map((h) => `${x(h.t).toFixed(1)},${y(sr.get(h)).toFixed(1)}`);
    chart.append(svg("polyline", { class: `series series-${sr.key}`, "data-series": sr.label, points: pts.join(" "),
                                   fill: "none", stroke: sr.color, "stroke-width": sr.width || 3,
                                   "stroke-dasharray": sr.dash || "" }));
    chart.append(svg("line", { x1: legendX, x2: legendX + 26, y1: 18, y2: 18, stroke: sr.color,
                               "stroke-width": 4, "stroke-dasharray": sr.dash || "" }));
    chart.append(svg("text", { x: legendX + 31, y: 24 }, sr.label));
    legendX += 31 + 8.5 * sr.label.length + 18;
    if (hist.length) {
      const v = sr.get(hist[hist.length - 1]);
      if (v === null || v === undefined) continue;
      let ly = y(v) + 5;
      while (labelYs.some((o) => Math.abs(o - ly) < 16)) ly += 16;
      labelYs.push(ly);
      chart.append(svg("text", { x: L + pw + 8, y: ly }, `${fmt(v)} ${sr.label}`));
    }
  }
}

function renderTimeline(s) {
  const hist = s.history || [];
  const ids = s.instances.map((i) => i.id);
  const perInstance = (field) => ids.map((id, n) => ({
    key: `instance-${n}`, label: id, get: (h) => (h[field] || {})[id],
    color: INSTANCE_STYLES[n % INSTANCE_STYLES.length][0], dash: INSTANCE_STYLES[n % INSTANCE_STYLES.length][1],
    width: 2 }));
  lineChart($("timeline"), hist, [
    { key: "rps", label: "requests/s", get: (h) => h.rps, color: "#0072B2", width: 4 },
    { key: "eps", label: "errors/s", get: (h) => h.eps, color: "#D55E00", dash: "10 6", width: 4 },
    ...(ids.length > 1 ? perInstance("per_instance") : []),
  ], s.events || []);
  lineChart($("sessions-chart"), hist, [
    { key: "sessions", label: "all instances", get: (h) => h.sessions, color: "#CC79A7", width: 4 },
    ...perInstance("sessions_by_instance"),
  ], s.events || []);
}

// --- events and controls -------------------------------------------------------------------

function renderEvents(s) {
  const items = [...(s.events || [])].reverse().map((ev) =>
    el("li", {}, `${Number(ev.t).toFixed(1)} s  ${ev.target} ${ev.kind}${ev.detail ? "  (" + ev.detail + ")" : ""}`));
  $("events").replaceChildren(...items);
}

function renderControls(s) {
  const ids = s.instances.map((i) => i.id);
  const killSel = $("kill-id");
  if ([...killSel.options].map((o) => o.value).join() !== ids.join()) {
    const keep = killSel.value;
    killSel.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
    if (ids.includes(keep)) killSel.value = keep;
  }
  const pol = $("policy-select");
  if (!pol.options.length) {
    pol.replaceChildren(...(s.policies || []).map((p) => el("option", { value: p }, p)));
    if (s.policy) pol.value = s.policy;
  }
  if (!$("scale-count").dataset.touched) $("scale-count").value = ids.length || 1;
}

function render(s) {
  last = s;
  renderTopology(s);
  renderTimeline(s);
  renderEvents(s);
  renderControls(s);
  document.body.dataset.seq = s.seq;
  if (s.error) setConnection("bad", `lab status failed: ${s.error}`);
}

function setConnection(kind, text) {
  const c = $("connection");
  c.className = `conn conn-${kind}`;
  c.textContent = text;
}

async function operate(op, body, label) {
  if (busy) return;
  busy = true;
  for (const b of document.querySelectorAll("#controls button")) b.disabled = true;
  const out = $("op-result");
  out.className = "op-result";
  out.textContent = `${label}: running…`;
  try {
    const resp = await fetch(`/api/${op}`, { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify(body) });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
    out.textContent = `${label}: done`;
  } catch (err) {
    out.className = "op-result bad";
    out.textContent = `${label} failed: ${err.message}`;
  } finally {
    busy = false;
    for (const b of document.querySelectorAll("#controls button")) b.disabled = false;
  }
}

function wire() {
  $("deploy").addEventListener("click", () => operate("deploy",
    { batch: Number($("deploy-batch").value) || 1, drain: $("deploy-drain").checked }, "deploy"));
  $("kill").addEventListener("click", () => operate("kill",
    { id: $("kill-id").value, signal: $("kill-signal").value }, `kill ${$("kill-id").value}`));
  $("scale-count").addEventListener("input", (e) => { e.target.dataset.touched = "1"; });
  $("scale").addEventListener("click", () => operate("scale",
    { count: Number($("scale-count").value) }, `scale to ${$("scale-count").value}`));
  $("policy").addEventListener("click", () => operate("policy",
    { policy: $("policy-select").value }, `policy ${$("policy-select").value}`));
  window.addEventListener("resize", () => last && drawWires());
  const source = new EventSource("/api/events");
  source.onopen = () => setConnection("ok", "live");
  source.onmessage = (e) => {
    setConnection("ok", "live");
    render(JSON.parse(e.data));
  };
  source.onerror = () => setConnection("wait", "reconnecting…");  // EventSource retries by itself
}

document.addEventListener("DOMContentLoaded", wire);
