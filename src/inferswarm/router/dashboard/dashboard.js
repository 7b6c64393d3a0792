// The inferswarm dashboard: reads /v1/network/stream (server-sent events over
// fetch, so the API key can travel in a header) and draws it. No build step,
// no dependencies: charts are drawn on <canvas> by drawChart below.
"use strict";

const KEY_STORAGE = "inferswarm.apiKey";
const MAX_POINTS = 300;
const MAX_EVENTS = 100;

const state = { series: [], events: [], network: null };
const $ = (id) => document.getElementById(id);

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// --- server-sent events over fetch ------------------------------------------

async function* sseMessages(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
    }
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error.message;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function setConnection(kind, text) {
  const badge = $("connection");
  badge.dataset.state = kind;
  badge.textContent = text;
}

let streamAbort = null;

async function follow() {
  let delay = 1000;
  for (;;) {
    streamAbort = new AbortController();
    try {
      const response = await fetch("/v1/network/stream", {
        headers: authHeaders(),
        signal: streamAbort.signal,
      });
      if (!response.ok) {
        setConnection("error", await errorMessage(response));
        if (response.status === 401) return; // wait for a key: the form restarts us
      } else {
        setConnection("live", "live");
        delay = 1000;
        for await (const data of sseMessages(response)) {
          receive(JSON.parse(data));
        }
        setConnection("connecting", "reconnecting…");
      }
    } catch (err) {
      if (streamAbort.signal.aborted) return;
      setConnection("error", "router unreachable; retrying");
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function restart() {
  if (streamAbort) streamAbort.abort();
  setConnection("connecting", "connecting…");
  follow();
}

// --- state ------------------------------------------------------------------

function receive(message) {
  if (message.type === "snapshot") {
    state.series = message.series;
    state.events = message.events;
  } else {
    // A tick repeats the second before its own, which is complete only now.
    for (const point of message.series) {
      const last = state.series[state.series.length - 1];
      const same = state.series.findLastIndex((p) => p.t === point.t);
      if (same >= 0) state.series[same] = point;
      else if (!last || point.t > last.t) state.series.push(point);
    }
    state.series = state.series.slice(-MAX_POINTS);
    state.events = [...message.events, ...state.events].slice(0, MAX_EVENTS);
  }
  state.network = message;
  render();
}

// --- rendering --------------------------------------------------------------

const fmt = {
  num: (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits)),
  secs: (v) => {
    if (v === null || v === undefined) return "–";
    return v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`;
  },
  clock: (unix) => new Date(unix * 1000).toLocaleTimeString(),
};

function render() {
  const n = state.network;
  $("router-info").textContent = `router ${n.router.version} · up ${Math.round(n.router.uptime_s)} s · policy ${n.router.policy}`;
  $("stat-miners").textContent = n.miners.length;
  $("stat-slots").textContent = `${n.busy_slots} / ${n.slots}`;
  $("stat-queue").textContent = `${n.queue.depth} / ${n.queue.capacity}`;
  $("stat-inflight").textContent = n.in_flight;
  const m = n.last_minute;
  $("stat-tokens").textContent = fmt.num(m.generation_tokens_per_s);
  $("stat-ttft").textContent = `${fmt.secs(m.ttft_p50)} / ${fmt.secs(m.ttft_p95)}`;
  $("stat-e2e").textContent = `${fmt.secs(m.e2e_p50)} / ${fmt.secs(m.e2e_p95)}`;
  const t = n.totals;
  $("stat-totals").textContent = `${t.failover || 0} · ${t.migration || 0} · ${t.hedge || 0} · ${t.ban || 0}`;
  renderCharts();
  renderMiners(n.miners);
  renderEvents();
  renderModels(n.models);
}

const CHARTS = [
  {
    id: "throughput",
    lines: [
      { key: "generation_tokens", label: "tokens/s", color: "#4fb3ff" },
      { key: "requests", label: "requests/s", color: "#3ecf8e" },
      { key: "errors", label: "errors/s", color: "#ff6b6b" },
    ],
  },
  {
    id: "latency",
    lines: [
      { key: "ttft_p50", label: "TTFT p50", color: "#3ecf8e" },
      { key: "ttft_p95", label: "TTFT p95", color: "#1f8f5e" },
      { key: "e2e_p50", label: "E2E p50", color: "#f5b54a" },
      { key: "e2e_p95", label: "E2E p95", color: "#c97f12" },
    ],
  },
  {
    id: "load",
    lines: [
      { key: "busy_slots", label: "tasks on miners", color: "#4fb3ff" },
      { key: "slots", label: "slots", color: "#52667a" },
      { key: "queue_depth", label: "queue", color: "#ff6b6b" },
      { key: "in_flight", label: "in flight", color: "#b48cff" },
    ],
  },
];

function renderCharts() {
  for (const chart of CHARTS) {
    const legend = $(`legend-${chart.id}`);
    if (!legend.childElementCount) {
      for (const line of chart.lines) {
        const item = document.createElement("span");
        const swatch = document.createElement("i");
        swatch.style.background = line.color;
        item.append(swatch, line.label);
        legend.append(item);
      }
    }
    drawChart($(`chart-${chart.id}`), state.series, chart.lines);
  }
}

// A small line chart: shared y axis from 0, x = the last MAX_POINTS seconds.
// Null values break the line (no sample that second). The canvas carries
// data-points (how many points have a value), for tests and curious readers.
function drawChart(canvas, series, lines) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const values = series.flatMap((p) => lines.map((l) => p[l.key])).filter((v) => v !== null && v !== undefined);
  const top = niceCeiling(Math.max(0, ...values));
  const left = 44;
  const bottom = height - 18;
  const plotWidth = width - left - 8;
  const x = (i) => left + (MAX_POINTS > 1 ? (i + MAX_POINTS - series.length) / (MAX_POINTS - 1) : 0) * plotWidth;
  const y = (v) => bottom - (top ? v / top : 0) * (bottom - 8);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#8394a6";
  ctx.strokeStyle = "#273241";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, y(v));
    ctx.lineTo(width - 8, y(v));
    ctx.stroke();
    ctx.fillText(shortNumber(v), 4, y(v) + 4);
  }
  ctx.fillText(`-${MAX_POINTS / 60} min`, left, height - 4);
  ctx.fillText("now", width - 30, height - 4);

  let withValue = 0;
  // Drawn last to first, so the first line of the legend lies on top.
  for (const line of [...lines].reverse()) {
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    series.forEach((point, i) => {
      const v = point[line.key];
      if (v === null || v === undefined) {
        drawing = false;
        return;
      }
      if (line === lines[0] && v) withValue++;
      if (drawing) ctx.lineTo(x(i), y(v));
      else ctx.moveTo(x(i), y(v));
      drawing = true;
    });
    ctx.stroke();
  }
  canvas.dataset.points = String(withValue);
}

function niceCeiling(v) {
  if (v <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= v) return step * power;
  }
  return 10 * power;
}

function shortNumber(v) {
  if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
  if (v >= 10 || v === 0) return v.toFixed(0);
  return v.toFixed(v >= 1 ? 1 : 2);
}

function cell(row, content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  row.append(td);
  return td;
}

function bar(fraction, label) {
  const outer = document.createElement("div");
  outer.className = "bar";
  const fill = document.createElement("div");
  fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  const text = document.createElement("span");
  text.textContent = label;
  outer.append(fill, text);
  return outer;
}

function renderMiners(miners) {
  const body = document.querySelector("#miners tbody");
  body.replaceChildren();
  $("no-miners").hidden = miners.length > 0;
  for (const m of miners) {
    const row = document.createElement("tr");
    row.dataset.miner = m.name;
    row.dataset.state = m.state;
    row.dataset.banned = String(m.banned);
    const u = m.utilisation;
    cell(row, m.name).title = m.id;
    cell(row, m.hardware_summary);
    cell(row, [...m.models, ...(m.loading || []).map((x) => `${x} (loading)`)].join(", "));
    cell(row, `T${m.tier}`);
    cell(row, m.banned ? "banned" : m.state);
    cell(row, bar(m.busy / m.slots, `${m.busy}/${m.slots}`));
    cell(row, u.cpu_percent === null ? "–" : bar(u.cpu_percent / 100, `${u.cpu_percent.toFixed(0)}%`));
    cell(row, u.ram_percent === null ? "–" : bar(u.ram_percent / 100, `${u.ram_percent.toFixed(0)}%`));
    cell(
      row,
      u.gpus.length ? u.gpus.map((g) => `${g.utilization_percent.toFixed(0)}%`).join(" ") : "–",
    );
    cell(row, fmt.num(m.tokens_per_s), "num");
    cell(row, `${m.completed} / ${m.failed}`, "num");
    cell(row, m.reputation === null ? "n/a" : fmt.num(m.reputation, 2)).title = state.network.reputation;
    body.append(row);
  }
}

function renderEvents() {
  const list = $("events");
  list.replaceChildren();
  for (const e of state.events) {
    const item = document.createElement("li");
    item.dataset.kind = e.kind;
    const time = document.createElement("time");
    time.textContent = fmt.clock(e.time);
    const kind = document.createElement("span");
    kind.className = `kind ${e.kind}`;
    kind.textContent = e.kind;
    item.append(time, kind, `${e.miner_name}: ${e.detail}`);
    list.append(item);
  }
}

function renderModels(models) {
  const select = $("pg-model");
  const ids = models.map((m) => m.id);
  const current = [...select.options].map((o) => o.value);
  if (ids.join("\n") === current.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(...ids.map((id) => new Option(id, id, false, id === chosen)));
}

// --- playground ---------------------------------------------------------------

async function play(event) {
  event.preventDefault();
  const output = $("pg-output");
  const meta = $("pg-meta");
  const send = $("pg-send");
  output.textContent = "";
  output.dataset.chunks = "0";
  meta.textContent = "sending…";
  send.disabled = true;
  const started = performance.now();
  let firstAt = null;
  let usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({
        model: $("pg-model").value,
        messages: [{ role: "user", content: $("pg-prompt").value }],
        max_tokens: Number($("pg-max").value) || 64,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    if (!response.ok) {
      meta.textContent = `error: ${await errorMessage(response)}`;
      return;
    }
    const miner = response.headers.get("x-inferswarm-miner") || "unknown";
    const minerId = response.headers.get("x-inferswarm-miner-id") || "";
    output.dataset.miner = miner;
    meta.textContent = `streaming from miner ${miner}…`;
    for await (const data of sseMessages(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        meta.textContent = `error: ${chunk.error.message}`;
        return;
      }
      if (chunk.usage) usage = chunk.usage;
      const text = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
      if (text) {
        if (firstAt === null) firstAt = performance.now();
        output.textContent += text;
        output.dataset.chunks = String(Number(output.dataset.chunks) + 1);
      }
    }
    const total = (performance.now() - started) / 1000;
    const ttft = firstAt === null ? null : (firstAt - started) / 1000;
    const tokens = usage ? usage.completion_tokens : null;
    meta.textContent =
      `served by miner ${miner} (${minerId}) · TTFT ${fmt.secs(ttft)} · ` +
      `${tokens === null ? "?" : tokens} tokens in ${fmt.secs(total)}`;
  } catch (err) {
    meta.textContent = `error: ${err.message}`;
  } finally {
    send.disabled = false;
  }
}

// --- start --------------------------------------------------------------------

$("api-key").value = apiKey();
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  restart();
});
$("playground").addEventListener("submit", play);
window.addEventListener("resize", () => state.network && renderCharts());
follow();
