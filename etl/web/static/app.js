// The dashboard's charts (uPlot, vendored) and sortable tables. Figures arrive from the
// JSON API as exact decimal strings; the chart turns them into numbers only to draw.
"use strict";

const fmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });

function utc(ts) {
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

function window_(payload, xs) {
  // The x scale runs to now, so a source that stopped reporting shows as a gap at the end;
  // it starts at the range asked for, or at the first point when the store is younger.
  const until = Date.parse(payload.until) / 1000;
  const from = Math.max(Date.parse(payload.from) / 1000, xs[0] - 0.05 * (until - xs[0]));
  return { time: true, range: () => (until > from ? [from, until] : [from - 3600, until + 3600]) };
}

function size(el) {
  return { width: Math.max(320, el.clientWidth), height: 340 };
}

function ticks(self, splits) {
  // Dates when the view spans days, times of day otherwise; always UTC.
  const span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
  return splits.map((s) => {
    const iso = new Date(s * 1000).toISOString();
    if (span >= 3 * 86400) return iso.slice(0, 10);
    if (span >= 86400) return iso.slice(5, 10) + " " + iso.slice(11, 16);
    if (span >= 1800) return iso.slice(11, 16);
    return iso.slice(11, 19);
  });
}

function portfolioChart(el, payload) {
  const pts = payload.points;
  const xs = pts.map((p) => Date.parse(p.at) / 1000);
  const total = pts.map((p) => Number(p.total));
  const incomplete = pts.map((p) => (p.reporting < p.expected ? Number(p.total) : null));
  const dd = pts.map((p) => (p.drawdown == null ? null : p.drawdown * 100));
  const opts = {
    ...size(el),
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    scales: { x: window_(payload, xs), dd: { range: (u, min) => [Math.min(min, -1), 0] } },
    axes: [
      { values: ticks, label: "UTC", space: 110 },
      { scale: "y", label: "total equity", values: (u, v) => v.map((x) => fmt.format(x)), size: 80 },
      { scale: "dd", side: 1, label: "drawdown %", grid: { show: false }, values: (u, v) => v.map((x) => x.toFixed(1)) },
    ],
    series: [
      { value: (u, v) => (v == null ? "—" : utc(v)) },
      { label: "total", stroke: "#1f5fbf", width: 2, points: { show: pts.length < 60 },
        value: (u, v) => (v == null ? "—" : fmt.format(v)) },
      { label: "incomplete", stroke: "#c0392b", width: 0, paths: () => null,
        points: { show: true, size: 7, fill: "#fff", stroke: "#c0392b" },
        value: (u, v) => (v == null ? "" : "some account missing") },
      { label: "drawdown", scale: "dd", stroke: "rgba(192,57,43,0.6)", fill: "rgba(192,57,43,0.12)", width: 1,
        points: { show: false },
        value: (u, v) => (v == null ? "—" : v.toFixed(2) + " %") },
    ],
  };
  return new uPlot(opts, [xs, total, incomplete, dd], el);
}

function accountChart(el, payload) {
  const byCcy = new Map();
  const times = [...new Set(payload.equity.map((r) => Date.parse(r.at) / 1000))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  for (const r of payload.equity) {
    const ccy = r.equity_currency || "?";
    if (!byCcy.has(ccy)) byCcy.set(ccy, new Array(times.length).fill(null));
    byCcy.get(ccy)[index.get(Date.parse(r.at) / 1000)] = Number(r.equity);
  }
  const colors = ["#1f5fbf", "#16a085", "#8e44ad", "#d35400"];
  const series = [{ value: (u, v) => (v == null ? "—" : utc(v)) }];
  const data = [times];
  [...byCcy.entries()].forEach(([ccy, values], i) => {
    series.push({ label: "equity " + ccy, stroke: colors[i % colors.length], width: 2,
      points: { show: times.length < 60 }, value: (u, v) => (v == null ? "—" : fmt.format(v)) });
    data.push(values);
  });
  const opts = {
    ...size(el),
    scales: { x: window_(payload, times) },
    axes: [{ values: ticks, label: "UTC", space: 110 }, { values: (u, v) => v.map((x) => fmt.format(x)), size: 80 }],
    series,
  };
  return new uPlot(opts, data, el);
}

async function draw(el, url, build) {
  el.dataset.drawn = "";
  el.innerHTML = "";
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) {
    el.textContent = "could not load the chart: HTTP " + response.status;
    return;
  }
  const payload = await response.json();
  const n = payload.points ? payload.points.length : payload.equity.length;
  if (n === 0) {
    el.innerHTML = '<p class="muted empty">Nothing loaded in this range.</p>';
    el.dataset.drawn = "0";
    return;
  }
  const plot = build(el, payload);
  window.addEventListener("resize", () => plot.setSize(size(el)));
  el.dataset.drawn = String(n);
}

function sortable(table) {
  table.querySelectorAll("thead th").forEach((th, col) => {
    th.addEventListener("click", () => {
      const body = table.tBodies[0];
      const rows = [...body.rows].filter((r) => r.cells.length > col);
      const asc = th.dataset.order !== "asc";
      table.querySelectorAll("thead th").forEach((h) => delete h.dataset.order);
      th.dataset.order = asc ? "asc" : "desc";
      const key = (r) => {
        const cell = r.cells[col];
        const raw = cell.dataset.sort ?? cell.textContent.trim();
        const num = Number(raw);
        return raw !== "" && !Number.isNaN(num) ? num : raw.toLowerCase();
      };
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach((r) => body.appendChild(r));
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const portfolio = document.getElementById("portfolio-chart");
  if (portfolio) {
    const buttons = document.querySelectorAll('.ranges[data-chart="portfolio"] button');
    const show = (range) => {
      buttons.forEach((b) => b.classList.toggle("active", b.dataset.range === range));
      draw(portfolio, portfolio.dataset.api + "?range=" + range, portfolioChart);
    };
    buttons.forEach((b) => b.addEventListener("click", () => show(b.dataset.range)));
    show(new URLSearchParams(location.search).get("range") || portfolio.dataset.range);
  }
  const account = document.getElementById("account-chart");
  if (account) draw(account, account.dataset.api, accountChart);
  document.querySelectorAll("table.sortable").forEach(sortable);
});
