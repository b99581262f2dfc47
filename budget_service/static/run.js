// The run page: polls the run's JSON endpoints and draws inline SVG. No library, no build step.
// Every value from the service reaches the DOM through textContent or setAttribute, never as HTML.
"use strict";

const POLL_MS = 3000;
const TOKEN_KEY = "gvm-budget-token";
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = { gvm: "#3b6fd8", explore: "#e3a21a", floor: "#8fa3c8", cap: "#1f3f85", filtered: "#c44" };
const runId = decodeURIComponent(location.pathname.split("/").pop());
const base = `/v1/runs/${encodeURIComponent(runId)}`;
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, error) {
    super(error ? error.message : `HTTP ${status}`);
    this.status = status;
    this.code = error ? error.code : "http_error";
  }
}

async function get(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(base + path, { headers, cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body && body.error);
  return body;
}

async function latestAllocation() {
  try {
    return await get("/allocations/latest");
  } catch (err) {
    if (err.code === "allocation_not_found") return null;
    throw err;
  }
}

// -- drawing -----------------------------------------------------------------------------------

const H = 200, M = { top: 10, right: 12, bottom: 34, left: 44 };
// Drawn at the container's pixel width, so text keeps one size in wide and narrow charts.
const widthOf = (container) => Math.max(320, container.clientWidth);

function el(tag, attrs, parent) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (parent) parent.append(node);
  return node;
}

function text(parent, x, y, value, anchor = "middle") {
  const node = el("text", { x, y, "text-anchor": anchor }, parent);
  node.textContent = value;
  return node;
}

function tip(node, value) {
  el("title", {}, node).textContent = value;
}

const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(3))));

// A chart frame with a y axis from 0 (or yMin) to yMax; returns the svg and the scales.
function frame(container, yMin, yMax, xLabel) {
  const W = widthOf(container);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  container.replaceChildren(svg);
  const y = (v) => M.top + (H - M.top - M.bottom) * (1 - (v - yMin) / (yMax - yMin || 1));
  for (const v of [yMin, (yMin + yMax) / 2, yMax]) {
    el("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: "axis" }, svg);
    text(svg, M.left - 6, y(v) + 4, fmt(v), "end");
  }
  text(svg, (M.left + W - M.right) / 2, H - 4, xLabel);
  return { svg, y, x0: M.left, width: W - M.left - M.right };
}

function empty(container, message) {
  const W = widthOf(container);
  const svg = el("svg", { viewBox: `0 0 ${W} 60` });
  text(svg, W / 2, 34, message).setAttribute("class", "empty");
  container.replaceChildren(svg);
}

// Bars of `values`; attrs(i) gives each bar's data attributes, label(i) its tooltip.
function bars(container, values, { xLabel, attrs, label, color, ticks }) {
  const { svg, y, x0, width } = frame(container, 0, Math.max(1, ...values), xLabel);
  const step = width / values.length;
  const gap = step > 4 ? Math.min(2, step * 0.15) : 0;
  values.forEach((v, i) => {
    const rect = el("rect", {
      x: x0 + i * step, y: y(v), width: Math.max(step - gap, 0.5), height: y(0) - y(v),
      fill: color(i), ...attrs(i),
    }, svg);
    tip(rect, label(i));
  });
  for (const [i, value] of ticks || []) text(svg, x0 + i * step, H - 16, value);
  return svg;
}

function histogram(container, values, lo, hi, name) {
  const bins = 10, counts = new Array(bins).fill(0);
  const width = hi - lo || 1;
  for (const v of values) counts[Math.min(bins - 1, Math.max(0, Math.floor(((v - lo) / width) * bins)))]++;
  const edge = (i) => lo + (width * i) / bins;
  const ticks = [...Array(bins + 1).keys()].filter((i) => i % 2 === 0).map((i) => [i, fmt(edge(i))]);
  bars(container, counts, {
    xLabel: `${name} (prompts per bin)`,
    attrs: (i) => ({ "data-count": counts[i], "data-lo": edge(i), "data-hi": edge(i + 1) }),
    label: (i) => `${name} in [${fmt(edge(i))}, ${fmt(edge(i + 1))}): ${counts[i]} prompts`,
    color: () => COLORS.gvm,
    ticks,
  });
}

// One point per allocation; the y axis starts at 0, or (zoom) hugs the values.
function lineChart(container, points, value, name, zoom) {
  const kept = points.filter((p) => value(p) !== null);
  if (!kept.length) return empty(container, "no allocation yet");
  const values = kept.map(value), min = Math.min(...values), max = Math.max(...values);
  const pad = (max - min) * 0.1 || Math.abs(max) * 0.05 || 1;
  const lo = zoom ? min - pad : Math.min(0, min), hi = zoom ? max + pad : Math.max(max, lo + 1);
  const { svg, y, x0, width } = frame(container, lo, hi, "allocation (step)");
  const x = (i) => x0 + (kept.length === 1 ? width / 2 : (width * i) / (kept.length - 1));
  el("polyline", { points: kept.map((p, i) => `${x(i)},${y(value(p))}`).join(" ") }, svg);
  kept.forEach((p, i) => {
    const dot = el("circle", { cx: x(i), cy: y(value(p)), r: kept.length > 200 ? 1 : 2.5,
                               "data-step": p.step, "data-value": value(p) }, svg);
    tip(dot, `step ${p.step}: ${name} ${fmt(value(p))}`);
  });
  const first = kept[0].step, last = kept[kept.length - 1].step;
  text(svg, x(0), H - 16, `step ${first}`, "start");
  if (kept.length > 1) text(svg, x(kept.length - 1), H - 16, `step ${last}`, "end");
}

// -- the page ----------------------------------------------------------------------------------

function renderAllocation(allocation) {
  if (!allocation) {
    for (const id of ["allocation", "p-hat", "g-hat"]) empty($(id), "no allocation yet");
    $("legend").replaceChildren();
    return;
  }
  const items = [...allocation.items].sort((a, b) => b.samples - a.samples);
  bars($("allocation"), items.map((it) => it.samples), {
    xLabel: `${items.length} prompts, most samples first`,
    attrs: (i) => ({ "data-prompt-id": items[i].prompt_id, "data-samples": items[i].samples,
                     "data-reason": items[i].reason }),
    label: (i) => {
      const it = items[i];
      return `${it.prompt_id}: ${it.samples} samples (${it.reason}), p̂ ${fmt(it.p_hat)}, ĝ ${fmt(it.g_hat)}`;
    },
    color: (i) => COLORS[items[i].reason] || "#888",
  });
  const reasons = [...new Set(items.map((it) => it.reason))];
  $("legend").replaceChildren(...reasons.map((reason) => {
    const entry = document.createElement("span"), swatch = document.createElement("i");
    swatch.style.background = COLORS[reason] || "#888";
    entry.append(swatch, `${reason}: ${items.filter((it) => it.reason === reason).length}`);
    return entry;
  }));
  histogram($("p-hat"), items.map((it) => it.p_hat), 0, 1, "p̂");
  const gs = items.map((it) => it.g_hat);
  histogram($("g-hat"), gs, 0, Math.max(...gs, 1e-12), "ĝ");
}

function renderFacts(run, allocation, history) {
  const facts = [["strategy", run.config.strategy]];
  if (allocation) {
    const ratio = allocation.uniform_variance > 0 ? allocation.predicted_variance / allocation.uniform_variance : null;
    facts.push(["step", allocation.step], ["prompts", allocation.items.length],
               ["budget", allocation.budget], ["total samples", allocation.total],
               ["predicted / uniform", ratio === null ? "–" : ratio.toFixed(3)]);
  }
  facts.push(["allocations kept", history.points.length], ["updated", new Date(run.updated_at).toLocaleString()]);
  $("facts").replaceChildren(...facts.map(([name, value]) => {
    const div = document.createElement("div"), dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = String(value);
    dd.dataset.fact = name;
    div.append(dt, dd);
    return div;
  }));
}

function renderConfig(config) {
  $("config").replaceChildren(...Object.entries(config).map(([key, value]) => {
    const row = document.createElement("tr"), th = document.createElement("th"), td = document.createElement("td");
    th.textContent = key;
    td.textContent = value === null ? "–" : String(value);
    row.dataset.key = key;
    row.append(th, td);
    return row;
  }));
}

let shown = null; // what the page shows: the last history point, to skip unchanged redraws

async function refresh() {
  try {
    const [run, history] = await Promise.all([get(""), get("/allocations/history")]);
    const key = JSON.stringify([history.points.length, history.points.at(-1)]);
    $("content").hidden = false; // before drawing: the charts take their container's width
    $("token-form").hidden = true;
    $("error").hidden = true;
    if (key !== shown) {
      const allocation = await latestAllocation();
      renderAllocation(allocation);
      lineChart($("ratio"), history.points,
                (p) => (p.uniform_variance > 0 ? p.predicted_variance / p.uniform_variance : null),
                "predicted / uniform", true);
      lineChart($("totals"), history.points, (p) => p.total, "samples", false);
      renderFacts(run, allocation, history);
      shown = key;
    }
    renderConfig(run.config);
    $("status").textContent = `updated ${new Date().toLocaleTimeString()} · refreshes every ${POLL_MS / 1000} s`;
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      showTokenForm(err.message);
    } else {
      $("error").textContent = err.code === "run_not_found" ? `No run ${runId} on this service.` : err.message;
      $("error").hidden = false;
      $("status").textContent = `failed at ${new Date().toLocaleTimeString()} · retrying`;
    }
  }
  $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

function showTokenForm(reason) {
  $("content").hidden = true;
  for (const id of ["allocation", "p-hat", "g-hat", "ratio", "totals", "facts", "config", "legend"]) $(id).replaceChildren();
  shown = null;
  $("token-reason").textContent = `The service answered: ${reason}.`;
  $("token-form").hidden = false;
  $("status").textContent = "waiting for a token";
}

async function poll() {
  if ($("token-form").hidden) await refresh(); // a shown form waits for its submit
  setTimeout(poll, POLL_MS);
}

$("run-id").textContent = runId;
document.title = `${runId} · GVM Budget`;
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  refresh();
});
$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  refresh();
});
poll();
