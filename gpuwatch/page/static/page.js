// gpuwatch live page: polls /api/page once per poll interval and draws the host verdict, one card
// per GPU with its last 15 minutes (SVG), the token sources and a power-limit tuner result.
// Served by gpuwatch itself; fetches nothing from any other host. Text from the daemon is always
// set as text (textContent), never parsed as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg"; // the SVG namespace name; not fetched
const MARKS = { ok: "✓", warning: "▲", critical: "✖", unknown: "?" };
const REASON_WORDS = {
  idle: "idle",
  applications_clocks: "application clocks",
  sw_power_cap: "power cap",
  hw_slowdown: "HW slowdown",
  sync_boost: "sync boost",
  sw_thermal: "SW thermal",
  hw_thermal: "HW thermal",
  hw_power_brake: "HW power brake",
  display_clocks: "display clocks",
  other: "other reason",
};
// Reasons that are the normal state of a working or resting GPU (the README's throttle classes):
// drawn in the series colour; the others (heat, slowdown, brake, unknown) in warning colours.
const NORMAL_REASONS = ["idle", "sw_power_cap", "applications_clocks", "sync_boost", "display_clocks"];
const THROTTLE_WORDS = {
  none: "clocks not held back",
  idle: "idle",
  power_cap: "held at its power cap",
  thermal: "slowed by heat",
  power_brake: "power brake (external signal)",
  hw_slowdown: "hardware slowdown",
  clocks_setting: "clocks fixed by a setting",
  unknown: "clocks low, no reason reported",
};
const THRESHOLD_WORDS = { max_operating: "max op.", slowdown: "slowdown", shutdown: "shutdown" };

const state = { history: null, status: null, tuner: undefined, lastTimestamp: null, failures: 0, lostAt: null };

// -- small DOM helpers ---------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(key, String(value));
  }
}

function fmt(value, decimals) {
  return value === null || value === undefined ? "n/a" : value.toFixed(decimals);
}

function clock(timestamp) {
  return new Date(timestamp * 1000).toLocaleTimeString([], { hour12: false });
}

// -- fetching ------------------------------------------------------------------------------------

function pollDelayMs() {
  const seconds = state.status && state.status.poll_interval_seconds;
  // at most a second apart: a simulated host (--sim-speed) polls faster than its interval says
  return Math.min(1000, Math.max(250, (seconds || 1) * 1000));
}

async function poll() {
  // location.origin, not a relative URL: a page opened with a user and password in its address has
  // them in its base URL, and fetch refuses a URL that carries credentials.
  const full = state.history === null;
  const url = new URL("/api/page", location.origin);
  if (!full) url.searchParams.set("since", String(state.lastTimestamp));
  let delay = pollDelayMs();
  try {
    const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    take(await response.json(), full);
    state.failures = 0;
    state.lostAt = null;
    showContact(null);
  } catch (error) {
    state.failures += 1;
    if (state.lostAt === null) state.lostAt = Date.now() / 1000;
    state.history = null; // a daemon that comes back may be a new one: load whole again
    showContact(`✖ No answer from gpuwatch since ${clock(state.lostAt)} (${error.message}); retrying. The values below are from before.`);
    delay = Math.min(5000, 500 * state.failures);
  }
  setTimeout(poll, delay);
}

function take(doc, full) {
  const status = doc.status;
  if (!full && state.lastTimestamp !== null && status.timestamp < state.lastTimestamp) {
    state.history = null; // the daemon restarted between two polls: its clock began again
    return;
  }
  if (full) {
    state.history = doc.history;
    state.tuner = doc.tuner;
  } else {
    append(state.history, doc.history);
  }
  state.status = status;
  const times = state.history.timestamps;
  state.lastTimestamp = times.length ? times[times.length - 1] : status.timestamp;
  render();
}

function append(history, more) {
  history.timestamps.push(...more.timestamps);
  for (const [index, columns] of Object.entries(more.gpus)) {
    const mine = history.gpus[index];
    if (mine === undefined) {
      // a GPU first seen now: nulls for the points before it
      const before = history.timestamps.length - more.timestamps.length;
      history.gpus[index] = Object.fromEntries(Object.entries(columns).map(([k, v]) => [k, new Array(before).fill(null).concat(v)]));
    } else {
      for (const [key, values] of Object.entries(columns)) mine[key].push(...values);
    }
  }
  const newest = history.timestamps[history.timestamps.length - 1];
  let drop = 0;
  while (drop < history.timestamps.length && history.timestamps[drop] < newest - history.window_seconds) drop += 1;
  if (drop) {
    history.timestamps.splice(0, drop);
    for (const columns of Object.values(history.gpus)) for (const values of Object.values(columns)) values.splice(0, drop);
  }
}

function showContact(text) {
  const node = document.getElementById("contact");
  node.hidden = text === null;
  node.textContent = text || "";
}

// -- the host ------------------------------------------------------------------------------------

function render() {
  const status = state.status;
  const verdict = status.verdict || "unknown";
  const host = document.getElementById("host");
  host.className = `host state-${verdict}`;
  const line = document.getElementById("verdict");
  line.className = `verdict ${verdict}`;
  line.dataset.verdict = verdict;
  line.replaceChildren(h("span", { class: "mark", "aria-hidden": "true" }, MARKS[verdict] || "?"), " ", h("span", { class: "word" }, hostSentence(status)));
  const reasons = document.getElementById("reasons");
  reasons.replaceChildren(...(status.reasons || []).map((r) => h("li", {}, r)));
  const poll = document.getElementById("poll");
  poll.dataset.timestamp = String(status.timestamp);
  const parts = [`Poll at ${clock(status.timestamp)}`];
  if (status.age_seconds !== null && status.age_seconds !== undefined) parts.push(`data ${status.age_seconds.toFixed(1)} s old`);
  if (status.poll_interval_seconds) parts.push(`every ${status.poll_interval_seconds} s`);
  if (status.driver_version) parts.push(`driver ${status.driver_version}`);
  if (!status.nvml_up) parts.push(`NVML down: ${status.nvml_error || "unknown error"}`);
  poll.textContent = parts.join(" · ");
  renderGpus(status);
  renderSources(status.sources || []);
  renderTuner(state.tuner);
}

function hostSentence(status) {
  const verdict = status.verdict || "unknown";
  const gpus = status.gpus || [];
  const words = { ok: "OK", warning: "WARNING", critical: "CRITICAL", unknown: "UNKNOWN" }[verdict] || verdict.toUpperCase();
  if (verdict === "ok") return `${words}: all ${gpus.length} GPUs healthy`;
  const bad = gpus.filter((g) => g.verdict === verdict).map((g) => g.index);
  if (bad.length && bad.length < gpus.length) return `${words}: GPU ${bad.join(", ")} of ${gpus.length} need${bad.length === 1 ? "s" : ""} attention`;
  return `${words}`;
}

// -- GPU cards -----------------------------------------------------------------------------------

function renderGpus(status) {
  const container = document.getElementById("gpus");
  const cards = (status.gpus || []).map((gpu) => gpuCard(gpu, state.history.gpus[String(gpu.index)], state.history.timestamps));
  container.replaceChildren(...cards);
}

function gpuCard(gpu, columns, times) {
  const verdict = gpu.verdict || "unknown";
  const card = h("article", { class: `card state-${verdict}`, "data-gpu": gpu.index, "data-verdict": verdict });
  const throttle = gpu.throttle_class;
  card.append(
    h("h3", {}, `GPU ${gpu.index}`, h("span", { class: "name" }, gpu.name || ""),
      h("span", { class: `badge ${verdict}`, "data-field": "verdict" }, `${MARKS[verdict] || "?"} ${verdict}`)),
  );
  const prefix = `GPU ${gpu.index}: `;
  card.append(h("ul", { class: "why" }, ...(gpu.reasons || []).map((r) => h("li", {}, r.startsWith(prefix) ? r.slice(prefix.length) : r))));
  if (!gpu.up && gpu.stale_since === null) {
    // no values now: say so once, and show the temperature it had until it stopped answering
    card.append(h("p", { class: "down" }, `✖ Not answering: ${gpu.error || "no reading"}. No current values.`));
    if (times.length && columns && columns.temperature_celsius.some((v) => v !== null)) {
      const node = temperatureMetric(gpu, columns, times);
      node.querySelector(".label").textContent = "Temperature until it stopped answering";
      node.querySelector(".value").textContent = "";
      card.append(node);
    }
    card.append(facts(gpu));
    return card;
  }
  if (gpu.stale_since !== null && gpu.stale_since !== undefined) {
    card.append(h("p", { class: "down" }, `⌛ A read has hung since ${clock(gpu.stale_since)}; these values are older`));
  }
  if (columns) {
    card.append(temperatureMetric(gpu, columns, times), powerMetric(gpu, columns, times), clockMetric(gpu, columns, times));
  }
  card.append(memoryMetric(gpu));
  const words = THROTTLE_WORDS[throttle] || throttle;
  const throttleLine = !throttle ? "n/a" : words === throttle ? words : `${words} (${throttle})`;
  card.append(facts(gpu, throttleLine));
  return card;
}

function metric(label, field, value, text, ...body) {
  return h("div", { class: "metric", "data-field": field, "data-value": value === null || value === undefined ? "" : String(value) },
    h("div", { class: "head" }, h("span", { class: "label" }, label), h("span", { class: "value" }, text)), ...body);
}

function temperatureMetric(gpu, columns, times) {
  const t = gpu.temperature_celsius;
  const thresholds = gpu.temperature_thresholds_celsius || {};
  const margin = gpu.temperature_margin_celsius;
  if (gpu.temperature_reference === "margin") {
    // no absolute thresholds: the card reports only how far it is from its T.Limit point
    const text = `${fmt(t, 0)} °C · ${fmt(margin, 0)} °C below T.Limit`;
    const lines = [{ value: 0, label: "T.Limit 0", cls: "max_operating" }];
    const chart = timeChart(times, [{ values: columns.temperature_margin_celsius }], lines, { floor: 0, unit: "°C left", invert: true, zone: "max_operating" });
    return metric("Temperature (margin to T.Limit)", "temperature", t, text, chart);
  }
  const lines = Object.entries(THRESHOLD_WORDS)
    .filter(([key]) => thresholds[key] !== undefined && thresholds[key] !== null)
    .map(([key, words]) => ({ value: thresholds[key], label: `${words} ${thresholds[key].toFixed(0)}`, cls: key }));
  const limit = gpu.temperature_limit_celsius;
  let text = `${fmt(t, 0)} °C`;
  if (limit !== null && limit !== undefined) text += ` of ${limit.toFixed(0)} °C max`;
  if (margin !== null && margin !== undefined) text += margin >= 0 ? ` · ${margin.toFixed(0)} °C left` : ` · ${(-margin).toFixed(0)} °C OVER`;
  if (!lines.length) text += " · this card reports no thermal limits";
  const chart = timeChart(times, [{ values: columns.temperature_celsius }], lines, { unit: "°C", span: 40, zone: "max_operating" });
  const node = metric("Temperature", "temperature", t, text, chart);
  node.dataset.limit = limit === null || limit === undefined ? "" : String(limit);
  return node;
}

function powerMetric(gpu, columns, times) {
  const p = gpu.power_watts;
  const cap = gpu.power_limit_watts;
  let text = `${fmt(p, 0)} W`;
  if (cap !== null && cap !== undefined) text += ` of ${cap.toFixed(0)} W cap`;
  const caps = columns.power_limit_watts;
  const lastCap = caps.length ? caps[caps.length - 1] : cap;
  const lines = lastCap === null || lastCap === undefined ? [] : [{ value: lastCap, label: `cap ${lastCap.toFixed(0)}`, cls: "cap" }];
  const chart = timeChart(times, [{ values: columns.power_watts }], lines, { floor: 0, unit: "W" });
  const node = metric("Power", "power", p, text, chart);
  node.dataset.limit = cap === null || cap === undefined ? "" : String(cap);
  return node;
}

function clockMetric(gpu, columns, times) {
  const hz = gpu.sm_clock_hertz;
  const max = gpu.sm_clock_max_hertz;
  const mhz = (v) => (v === null || v === undefined ? null : v / 1e6);
  let text = `${fmt(mhz(hz), 0)} MHz`;
  if (max) text += ` of ${(max / 1e6).toFixed(0)} MHz max`;
  const lines = max ? [{ value: max / 1e6, label: `max ${(max / 1e6).toFixed(0)}`, cls: "max" }] : [];
  const chart = timeChart(times, [{ values: columns.sm_clock_hertz.map(mhz) }], lines, { floor: 0, unit: "MHz" });
  const now = gpu.clock_event_reasons || [];
  const active = now.length ? `now: ${now.map((r) => REASON_WORDS[r] || r).join(", ")}` : "no clock-event reason active now";
  return metric("SM clock", "sm_clock", hz, text, chart, h("div", { class: "legend" }, `Clock-event reasons, last 15 min (${active})`), reasonTimeline(times, columns.clock_event_reasons, now));
}

function memoryMetric(gpu) {
  const used = gpu.memory_used_bytes;
  const size = gpu.memory_size_bytes;
  const gib = (v) => v / 2 ** 30;
  let text = used === null || used === undefined ? "n/a" : `${gib(used).toFixed(1)} GiB`;
  if (size) text += ` of ${gib(size).toFixed(1)} GiB`;
  const bar = used !== null && used !== undefined && size ? h("meter", { min: 0, max: size, value: used, high: size * 0.95, optimum: 0, title: text }) : null;
  return metric("VRAM", "memory", used, text, bar);
}

function facts(gpu, throttleLine) {
  const list = h("ul", { class: "facts" });
  if (throttleLine !== undefined) list.append(h("li", { "data-field": "throttle" }, `Throttle (over the health window): ${throttleLine}`));
  let ecc = "ECC: not reported";
  if (gpu.ecc_enabled === false) ecc = "ECC: off";
  else if (gpu.ecc_enabled) {
    const errors = gpu.ecc_errors || {};
    const unc = errors.uncorrected_volatile || 0;
    const cor = errors.corrected_volatile || 0;
    ecc = `ECC: on · ${unc} uncorrected, ${cor} corrected since boot`;
    if (unc) ecc = `✖ ${ecc}`;
  }
  list.append(h("li", { class: ecc.startsWith("✖") ? "alarm" : null, "data-field": "ecc" }, ecc));
  const answering = gpu.up || (gpu.stale_since !== null && gpu.stale_since !== undefined);
  let remap = answering ? "Row remapping: not reported" : "Row remapping: unknown while it does not answer";
  if (gpu.row_remap_failure) remap = "✖ Row remapping FAILED: the card needs service";
  else if (gpu.row_remap_pending) remap = "▲ Row remap pending: reset the GPU to apply it";
  else if (gpu.row_remap_pending === false) remap = "Row remapping: nothing pending";
  list.append(h("li", { class: remap.startsWith("Row") ? null : "alarm", "data-field": "remap" }, remap));
  const xids = Object.entries(gpu.xid_errors || {});
  // NVML delivers no event for some XIDs (79, fallen off the bus): only the kernel log has them
  let xidText = answering ? "XIDs: none since gpuwatch started" : "XIDs: none from NVML (a GPU that fell off the bus logs Xid 79 in the kernel log only)";
  if (xids.length) {
    const recent = gpu.recent_xids || [];
    const last = recent.length ? ` (last Xid ${recent[recent.length - 1].xid} at ${clock(recent[recent.length - 1].timestamp)})` : "";
    xidText = `✖ XIDs: ${xids.map(([x, n]) => `Xid ${x} ×${n}`).join(", ")}${last}`;
  }
  list.append(h("li", { class: xids.length ? "alarm" : null, "data-field": "xid" }, xidText));
  return list;
}

// -- charts --------------------------------------------------------------------------------------

const W = 320;
const PAD = { left: 30, right: 62, top: 6, bottom: 13 };

function timeScale(times) {
  const newest = times.length ? times[times.length - 1] : 0;
  const window = state.history.window_seconds;
  const x = (t) => PAD.left + ((t - (newest - window)) / window) * (W - PAD.left - PAD.right);
  return { x, newest, window };
}

function niceStep(span) {
  // the smallest round step (1, 2, 2.5 or 5 times a power of ten) giving at most about five intervals
  const raw = span / 4.5 || 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((step) => step >= raw);
}

function niceRange(values, lines, options) {
  const all = values.concat(lines.map((l) => l.value)).filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  let lo = all.length ? Math.min(...all) : 0;
  let hi = all.length ? Math.max(...all) : 1;
  if (options.floor !== undefined) lo = Math.min(options.floor, lo);
  if (options.span !== undefined && hi - lo < options.span) lo = hi - options.span;
  if (hi - lo < 1e-9) hi = lo + 1;
  const step = niceStep(hi - lo);
  return [Math.floor(lo / step) * step, Math.ceil(hi / step) * step, step];
}

function timeChart(times, series, lines, options) {
  const H = 96;
  const { x, newest } = timeScale(times);
  const values = series.flatMap((one) => one.values);
  const [lo, hi, step] = niceRange(values, lines, options);
  const y = (v) => PAD.top + ((hi - v) / (hi - lo)) * (H - PAD.top - PAD.bottom);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  const bottom = H - PAD.bottom;
  for (let v = lo; v <= hi + step / 2; v += step) {
    svg.append(s("line", { class: v === lo ? "axis" : "grid", x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }));
    svg.append(s("text", { x: PAD.left - 3, y: y(v) + 3, "text-anchor": "end" }, String(Math.round(v * 10) / 10)));
  }
  for (const [label, ago] of [["−15 min", 900], ["−10", 600], ["−5", 300], ["now", 0]]) {
    const anchor = ago === 900 ? "start" : ago === 0 ? "end" : "middle";
    svg.append(s("text", { x: x(newest - ago), y: H - 2, "text-anchor": anchor }, label));
  }
  // past the first limit (the max-operating point, the cap) the plot is shaded: over the line
  const first = options.zone && lines.find((l) => l.cls === options.zone);
  if (first) {
    const edge = options.invert ? bottom : PAD.top;
    const top = Math.min(edge, y(first.value));
    svg.append(s("rect", { class: "zone", x: PAD.left, y: top, width: W - PAD.left - PAD.right, height: Math.abs(y(first.value) - edge) }));
  }
  // limit lines, labelled on the right; labels pushed apart so that close thresholds stay legible
  const placed = lines.map((l) => ({ ...l, y: y(l.value) })).sort((a, b) => a.y - b.y);
  let previous = -Infinity;
  for (const line of placed) {
    svg.append(s("line", { class: `limit ${line.cls}`, x1: PAD.left, x2: W - PAD.right, y1: line.y, y2: line.y, "data-limit": line.value }));
    const labelY = Math.max(line.y + 3, previous + 9);
    previous = labelY;
    svg.append(s("text", { class: `limit-label ${line.cls}`, x: W - PAD.right + 3, y: labelY }, line.label));
  }
  series.forEach((one, n) => {
    let d = "";
    let pen = false;
    let last = null;
    one.values.forEach((v, i) => {
      if (v === null || v === undefined) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${x(times[i]).toFixed(1)} ${y(v).toFixed(1)}`;
      pen = true;
      last = [x(times[i]), y(v)];
    });
    const cls = n ? "series second" : "series";
    svg.append(s("path", { class: cls, d }));
    if (last) {
      svg.append(s("circle", { class: n ? "dot second" : "dot", cx: last[0].toFixed(1), cy: last[1].toFixed(1), r: 2.2 }));
      svg.dataset.lastY = last[1].toFixed(2);
    }
  });
  const title = lines.length ? `${options.unit}; lines: ${lines.map((l) => l.label).join(", ")}` : options.unit;
  svg.prepend(s("title", {}, title));
  return svg;
}

function reasonTimeline(times, reasons, now) {
  const { x } = timeScale(times);
  const seen = [];
  for (const list of reasons) for (const r of list) if (!seen.includes(r)) seen.push(r);
  for (const r of now) if (!seen.includes(r)) seen.push(r);
  const rowH = 10;
  const H = Math.max(1, seen.length) * rowH + 4;
  const svg = s("svg", { class: "chart reasons-timeline", viewBox: `0 0 ${W} ${H}`, role: "img", "data-reasons": seen.join(" ") });
  svg.append(s("title", {}, seen.length ? `clock-event reasons: ${seen.join(", ")}` : "no clock-event reasons"));
  if (!seen.length) {
    svg.append(s("text", { x: PAD.left, y: 10 }, "none in the last 15 minutes"));
    return svg;
  }
  seen.forEach((reason, row) => {
    const top = 2 + row * rowH;
    const isNow = now.includes(reason);
    const kind = NORMAL_REASONS.includes(reason) ? "normal" : "alarm";
    svg.append(s("text", { x: W - PAD.right + 3, y: top + 7.5, class: isNow && kind === "alarm" ? "limit-label" : null }, `${REASON_WORDS[reason] || reason}${isNow ? " ◀ now" : ""}`));
    svg.append(s("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: top + rowH - 1, y2: top + rowH - 1 }));
    let start = null;
    for (let i = 0; i <= reasons.length; i += 1) {
      const on = i < reasons.length && reasons[i].includes(reason);
      if (on && start === null) start = i;
      if (!on && start !== null) {
        const x0 = x(times[start]);
        const x1 = i < times.length ? x(times[i]) : Math.max(x0 + 1.5, x(times[i - 1]));
        svg.append(s("rect", { class: `band ${kind}${isNow && i === reasons.length ? " now" : ""}`, x: x0.toFixed(1), y: top + 1, width: Math.max(1.5, x1 - x0).toFixed(1), height: rowH - 3 }));
        start = null;
      }
    }
  });
  return svg;
}

// -- token sources -------------------------------------------------------------------------------

function renderSources(sources) {
  const section = document.getElementById("sources-section");
  section.hidden = sources.length === 0;
  const rows = sources.map((source) => {
    const perToken = (source.joules_per_token_by_kind || {}).generation;
    let stateText = source.up ? "✓ up" : `✖ down: ${source.error || "no answer"}`;
    if (source.up && source.tokens_per_joule === null) stateText = source.gpus && source.gpus.length ? "✓ up · window filling" : "✓ up · looking for its GPUs";
    const gpus = (source.gpus || []).join(", ") + (source.gpus_from === "auto" ? " (found)" : "");
    return h("tr", { "data-source": source.name },
      h("td", {}, source.name + (source.preset ? ` (${source.preset})` : "")),
      h("td", {}, gpus || "?"),
      h("td", {}, stateText),
      h("td", { class: "num" }, source.tokens_per_joule === null || source.tokens_per_joule === undefined ? "n/a" : source.tokens_per_joule.toPrecision(3)),
      h("td", { class: "num" }, perToken === null || perToken === undefined ? "n/a" : perToken.toPrecision(3)),
      h("td", { class: "num" }, source.window_seconds ? `${source.window_seconds.toFixed(0)} s` : "n/a"));
  });
  document.querySelector("#sources tbody").replaceChildren(...rows);
}

// -- the power-limit tuner result ----------------------------------------------------------------

function renderTuner(tuner) {
  const section = document.getElementById("tuner-section");
  section.hidden = !tuner;
  if (!tuner) return;
  const summary = document.getElementById("tuner-summary");
  const chartBox = document.getElementById("tuner-chart");
  if (tuner.error) {
    summary.textContent = `✖ ${tuner.error}`;
    chartBox.replaceChildren();
    return;
  }
  const result = tuner.result;
  const rec = result.recommended;
  const who = result.source ? `source ${result.source}` : "the GPUs' own work measure (no token source)";
  let text = `GPUs ${result.gpus.join(", ")}, measured with ${who}.`;
  if (rec) text += ` Recommended: ${rec.limit_watts.toFixed(0)} W, ${(rec.throughput_ratio * 100).toFixed(1)} % of the tokens for ${(rec.energy_ratio * 100).toFixed(0)} % of the energy.`;
  else text += " No limit kept the throughput asked for; no recommendation.";
  if (!result.restored) text += " ✖ The original limits were NOT restored.";
  summary.textContent = text;
  chartBox.replaceChildren(tunerChart(result), h("div", { class: "legend" }, "● tokens per joule (left axis, solid) · ■ tokens per second (right axis, dashed)"));
}

function tunerChart(result) {
  // wider than the time charts, so that its text stays small where it spans the page
  const TW = 560;
  const H = 220;
  const pad = { left: 40, right: 48, top: 26, bottom: 20 };
  const points = result.points;
  const limits = points.map((p) => p.limit_watts);
  const lo = Math.min(...limits);
  const hi = Math.max(...limits);
  const x = (w) => pad.left + ((w - lo) / (hi - lo || 1)) * (TW - pad.left - pad.right);
  // each series on its own axis, from a little below its lowest point: the differences are the story
  const axis = (key) => {
    const vs = points.map((p) => p[key]).filter((v) => v !== null);
    const [bottom, top] = vs.length ? [Math.min(...vs), Math.max(...vs)] : [0, 1];
    const span = top - bottom || Math.abs(top) || 1;
    const low = Math.max(0, bottom - span * 0.25);
    const high = top + span * 0.1;
    return { low, high, y: (v) => pad.top + (1 - (v - low) / (high - low)) * (H - pad.top - pad.bottom) };
  };
  const joules = axis("tokens_per_joule");
  const speed = axis("tokens_per_second");
  const svg = s("svg", { class: "chart tuner-chart", viewBox: `0 0 ${TW} ${H}`, role: "img" });
  svg.append(s("title", {}, "tokens per joule and tokens per second against the power limit"));
  svg.append(s("line", { class: "axis", x1: pad.left, x2: TW - pad.right, y1: H - pad.bottom, y2: H - pad.bottom }));
  for (const p of points) svg.append(s("text", { x: x(p.limit_watts), y: H - 6, "text-anchor": "middle" }, `${p.limit_watts.toFixed(0)} W`));
  for (const [a, side, digits] of [[joules, "left", 2], [speed, "right", 0]]) {
    for (const v of [a.low, (a.low + a.high) / 2, a.high]) {
      const left = side === "left";
      svg.append(s("text", { x: left ? pad.left - 4 : TW - pad.right + 4, y: a.y(v) + 3, "text-anchor": left ? "end" : "start" }, v.toFixed(digits)));
    }
  }
  svg.append(s("text", { x: 2, y: 10 }, "tokens/J"));
  svg.append(s("text", { x: TW - 2, y: 10, "text-anchor": "end" }, "tokens/s"));
  const line = (key, a, cls) => {
    let d = "";
    for (const p of points) if (p[key] !== null) d += `${d ? "L" : "M"}${x(p.limit_watts).toFixed(1)} ${a.y(p[key]).toFixed(1)}`;
    svg.append(s("path", { class: cls, d }));
  };
  line("tokens_per_joule", joules, "series");
  line("tokens_per_second", speed, "series second");
  for (const p of points) {
    const cx = x(p.limit_watts);
    if (p.tokens_per_joule !== null) {
      const cy = joules.y(p.tokens_per_joule);
      svg.append(s("circle", { class: "dot", cx, cy, r: 3 }));
      svg.append(s("text", { x: cx + 5, y: cy - 5 }, p.tokens_per_joule.toPrecision(3)));
    }
    if (p.tokens_per_second !== null) {
      const cy = speed.y(p.tokens_per_second);
      svg.append(s("rect", { class: "dot second", x: cx - 3, y: cy - 3, width: 6, height: 6 }));
      svg.append(s("text", { x: cx + 5, y: cy + 11 }, p.tokens_per_second.toFixed(0)));
    }
  }
  const rec = result.recommended;
  if (rec) {
    const rx = x(rec.limit_watts);
    svg.append(s("line", { class: "recommended", x1: rx, x2: rx, y1: pad.top - 6, y2: H - pad.bottom }));
    svg.append(s("text", { class: "recommended-label", x: rx, y: pad.top - 10, "text-anchor": "middle" }, `▼ recommended ${rec.limit_watts.toFixed(0)} W`));
  }
  return svg;
}

poll();
