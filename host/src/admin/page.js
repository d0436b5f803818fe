// The live page of wasmux's experiments: reads /experiments every few
// seconds and draws each split route's arms side by side, with charts of
// their recent windows in inline SVG. No library, nothing fetched but
// /experiments.
"use strict";

const REFRESH_MS = 2000;
/// The charts' time axis: at least a minute, growing with the history the
/// server keeps (up to five minutes).
const CHART_SECONDS = 60;
const COLOURS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2"];
const SVG = "http://www.w3.org/2000/svg";

/// An element with attributes and children (strings become text, never HTML).
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const count = (n) => n.toLocaleString("en-US");
const percent = (rate, digits = 1) => (rate === null || rate === undefined ? "–" : (rate * 100).toFixed(digits) + "%");
const ms = (value) => (value === null || value === undefined ? "–" : value < 1 ? value.toFixed(3) : value < 10 ? value.toFixed(2) : value.toFixed(1));
/// Percentage points with a sign, never "-0.0".
function points(d, digits) {
  const text = (d * 100).toFixed(digits);
  return (Number(text) === 0 ? "+" + text.replace("-", "") : (d > 0 ? "+" : "") + text);
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/// "hit rate: 60.0% → 79.8%, +19.8 points (95% anytime-valid CI +16.2 to +23.1)", as
/// `wasmux experiments` says it; `digits` after the decimal point.
function verdict(name, difference, digits) {
  if (difference.ci95 === null) {
    return el("p", { class: "verdict unclear" }, `${name}: no requests on one side yet`);
  }
  const [low, high] = difference.ci95;
  const significant = difference.significant;
  return el(
    "p",
    { class: "verdict " + (significant ? "significant" : "unclear") },
    `${name}: ${percent(difference.first_rate, digits)} → ${percent(difference.rate, digits)}, ${points(difference.difference, digits)} points (95% anytime-valid CI ${points(low, digits)} to ${points(high, digits)})`,
    el("span", { class: "tag" }, significant ? "significant" : "not significant"),
  );
}

function armPanel(arm, index, windowSeconds) {
  const last = arm.series.requests.length - 1;
  const perSecond = last >= 0 ? arm.series.requests[last] / windowSeconds : 0;
  const rows = [
    ["weight", String(arm.weight)],
    ["requests", count(arm.requests)],
    ["requests/s now", perSecond.toFixed(1)],
    ["errors", `${percent(arm.requests ? arm.errors / arm.requests : null, 2)} (${count(arm.errors)})`],
  ];
  for (const [code, n] of Object.entries(arm.errors_by_code)) rows.push([`  ${code}`, count(n)]);
  const latency = arm.latency_ms;
  rows.push(["p50 / p90 / p99 ms", latency ? `${ms(latency.p50)} / ${ms(latency.p90)} / ${ms(latency.p99)}` : "–"]);
  for (const [name, n] of Object.entries(arm.outcomes)) {
    rows.push([name, `${percent(arm.requests ? n / arm.requests : null)} (${count(n)})`]);
  }
  return el(
    "div",
    { class: "arm", style: `--colour: ${COLOURS[index % COLOURS.length]}` },
    el("h4", {}, arm.plugin),
    el("span", { class: "version" }, arm.version ? `version ${arm.version}` : "not loaded"),
    el("dl", {}, rows.map(([term, value]) => [el("dt", {}, term), el("dd", {}, value)])),
  );
}

/// A line chart of one value per window for each arm; `null` leaves a gap.
function chart(title, lines, format, windowSeconds) {
  const width = 320, height = 150, left = 44, right = 8, top = 8, bottom = 20;
  const values = lines.flatMap((line) => line.values.filter((v) => v !== null));
  const length = Math.max(1, ...lines.map((line) => line.values.length));
  const slots = Math.max(length, Math.round(CHART_SECONDS / windowSeconds));
  let max = Math.max(0, ...values);
  max = max > 0 ? niceCeiling(max) : 1;
  // The newest window at the right edge ("now"), older ones to its left.
  const x = (i) => width - right - ((length - 1 - i) / (slots - 1)) * (width - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const drawing = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  for (const fraction of [0, 0.5, 1]) {
    const v = max * fraction;
    drawing.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    drawing.append(svg("text", { class: "label", x: left - 4, y: y(v) + 3, "text-anchor": "end" }, format(v)));
  }
  drawing.append(svg("text", { class: "label", x: left, y: height - 4 }, `−${Math.round(((slots - 1) * windowSeconds) / 60)} min`));
  drawing.append(svg("text", { class: "label", x: width - right, y: height - 4, "text-anchor": "end" }, "now"));
  lines.forEach((line) => {
    let run = [];
    const flush = () => {
      if (run.length === 1) run.push(run[0]);
      if (run.length) drawing.append(svg("polyline", { points: run.join(" "), stroke: line.colour, "data-arm": line.name }));
      run = [];
    };
    line.values.forEach((v, i) => (v === null ? flush() : run.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`)));
    flush();
  });
  return el("div", { class: "chart" }, el("h5", {}, title), drawing);
}

/// 1, 2 or 5 times a power of ten, at least `v`.
function niceCeiling(v) {
  const power = Math.pow(10, Math.floor(Math.log10(v)));
  for (const step of [1, 2, 5, 10]) if (step * power >= v) return step * power;
  return 10 * power;
}

const ratio = (numerators, denominators) => numerators.map((n, i) => (denominators[i] ? n / denominators[i] : null));

/// A canary's state in one line: "stepping: step 2 of 3, trap gets 50 %",
/// "promoted: …", "rolled back by the error-rate guard: …".
function canaryState(canary) {
  const { stable, candidate, steps } = canary.config;
  const state = canary.state;
  if (!canary.known) return `canary ${stable} → ${candidate}: state not read from the store yet (${candidate} gets nothing meanwhile)`;
  if (state.state === "stepping") {
    return `canary ${stable} → ${candidate}: stepping, step ${state.step + 1} of ${steps.length}, ${candidate} gets ${state.share} %`;
  }
  if (state.state === "promoted") return `canary ${stable} → ${candidate}: promoted, ${candidate} answers every request`;
  const e = state.figures.error_rate;
  const l = state.figures.latency;
  const why =
    state.guard === "error-rate"
      ? `${candidate} failed ${e.candidate_errors} of ${e.candidate_requests} requests, ${stable} ${e.stable_errors} of ${e.stable_requests} (max-extra-error-rate ${e.limit})`
      : `${candidate}'s p99 at least ${ms(l.candidate_p99_lower_seconds * 1e3)} ms against at most ${ms(l.stable_p99_upper_seconds * 1e3)} ms for ${stable} (max-p99-ratio ${l.limit})`;
  return `canary ${stable} → ${candidate}: rolled back by the ${state.guard} guard: ${why}; every request goes to ${stable}`;
}

function routeSection(route, windowSeconds) {
  const arms = route.arms;
  const split = arms.map((arm) => `${arm.plugin} ${arm.weight}`).join(" / ");
  const meta = [route.canary ? `shares ${split}` : `split ${split}`];
  meta.push(route.sticky ? `sticky on ${route.sticky}` : "interleaved (no sticky field)");
  meta.push(`counting since ${route.since.replace("T", " ").replace("Z", " UTC")} (${duration(route.seconds)})`);

  const verdicts = [];
  for (const arm of arms.slice(1)) {
    const versus = arm.against_first;
    if (!versus) continue;
    const lines = Object.entries(versus.outcomes).map(([name, d]) => verdict(`${name} rate`, d, 1));
    lines.push(verdict("error rate", versus.error_rate, 2));
    verdicts.push(el("p", {}, el("strong", {}, `${arm.plugin} against ${versus.against}`)), lines);
  }

  const colour = (i) => COLOURS[i % COLOURS.length];
  const perArm = (values) => arms.map((arm, i) => ({ name: arm.plugin, colour: colour(i), values: values(arm) }));
  const charts = [
    chart("requests per second", perArm((a) => a.series.requests.map((n) => n / windowSeconds)), (v) => v.toFixed(v < 10 ? 1 : 0), windowSeconds),
    chart("error rate", perArm((a) => ratio(a.series.errors, a.series.requests)), (v) => percent(v, v < 0.1 ? 1 : 0), windowSeconds),
    chart("p99 latency, ms", perArm((a) => a.series.p99_ms), ms, windowSeconds),
  ];
  const names = [...new Set(arms.flatMap((arm) => Object.keys(arm.series.outcomes)))].sort();
  for (const name of names) {
    const values = (a) => ratio(a.series.outcomes[name] || a.series.requests.map(() => 0), a.series.requests);
    charts.push(chart(`${name} rate`, perArm(values), (v) => percent(v, 0), windowSeconds));
  }

  return el(
    "section",
    { class: "route" },
    el("h3", {}, `route ${route.route}`),
    el("p", { class: "meta" }, meta.join(" · ")),
    route.canary ? el("p", { class: "canary " + route.canary.state.state }, canaryState(route.canary)) : [],
    el("div", { class: "arms" }, arms.map((arm, i) => armPanel(arm, i, windowSeconds))),
    el("div", { class: "verdicts" }, verdicts),
    el("div", { class: "charts" }, charts),
    el("div", { class: "legend" }, arms.map((arm, i) => el("span", { style: `--colour: ${colour(i)}` }, arm.plugin))),
  );
}

function render(report) {
  const main = document.getElementById("experiments");
  const sections = report.tenants.map((tenant) =>
    el("section", { class: "tenant" }, el("h2", {}, `tenant ${tenant.tenant}`), tenant.routes.map((route) => routeSection(route, report.window_seconds))),
  );
  if (sections.length === 0) {
    sections.push(el("p", { class: "empty" }, "No route has a split or a canary. Give a route a target like { split = { \"search\" = 50, \"search@fuzzy\" = 50 } } in the configuration."));
  }
  main.replaceChildren(...sections);
}

// With an admin token set, /experiments asks for it: the page asks its
// user once and keeps it in this tab's sessionStorage, nowhere else.
const TOKEN_KEY = "wasmux-admin-token";

function askForToken(retry) {
  const form = document.getElementById("token");
  form.hidden = false;
  form.onsubmit = (event) => {
    event.preventDefault();
    const value = form.elements.token.value.trim();
    if (value === "") return;
    sessionStorage.setItem(TOKEN_KEY, value);
    form.hidden = true;
    retry();
  };
}

async function refresh() {
  const status = document.getElementById("status");
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  try {
    const response = await fetch("experiments", { cache: "no-store", headers });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      status.className = "failed";
      status.textContent = token ? "the admin token was refused: enter it again" : "the admin endpoint has a token: enter it";
      askForToken(refresh);
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    status.className = "";
    status.textContent = `updated ${new Date().toLocaleTimeString()} · every ${REFRESH_MS / 1000} s`;
  } catch (error) {
    status.className = "failed";
    status.textContent = `cannot read /experiments: ${error.message}; retrying`;
  }
  setTimeout(refresh, REFRESH_MS);
}

refresh();
