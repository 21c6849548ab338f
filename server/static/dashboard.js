// The dashboard page: draws the progress chart (inline SVG), the leaderboards and the queue,
// and keeps them live: /api/queue every 2 s, the chart and tables again when the record changes.
// Plain JS, no framework, no build step, nothing loaded from outside this server.
"use strict";

(function () {
  const POLL_MS = 2000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  let chartData = null;
  let recordVersion = null;

  // A ?token= has been kept in an HttpOnly cookie by the server: drop it from the address bar.
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname);
  }

  function esc(text) {
    return String(text == null ? "" : text)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  function fmt(value, digits) {
    return value == null ? "—" : Number(value).toFixed(digits);
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(url + ": HTTP " + response.status);
    return response.json();
  }

  // Round tick values covering [lo, hi], about `count` of them.
  function ticks(lo, hi, count) {
    const span = hi - lo || 1;
    const raw = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Number(v.toFixed(10)));
    }
    return { values: out, step: step };
  }

  function decimals(step) {
    return Math.max(0, Math.min(6, -Math.floor(Math.log10(step)) + (step / Math.pow(10, Math.floor(Math.log10(step))) === 2.5 ? 1 : 0)));
  }

  // The same range rule as progress.png (server/dashboard/chart.py y_range).
  function yRange(values, noise) {
    const band = noise.baseline_mean != null && noise.measured
      ? [noise.baseline_mean - noise.threshold, noise.baseline_mean + noise.threshold] : [];
    if (!values.length) {
      if (noise.baseline_mean != null) return [noise.baseline_mean - 0.05, noise.baseline_mean + 0.05];
      return [0, 1];
    }
    const sorted = values.slice().sort((a, b) => a - b);
    const lo = Math.min(sorted[0], ...band);
    const q90 = sorted[Math.floor(0.9 * (sorted.length - 1))];
    let hi = Math.max(q90, ...band, sorted[0]);
    const last = sorted[sorted.length - 1];
    hi = last <= hi + 0.5 * Math.max(hi - lo, 1e-9) ? last : hi + 0.15 * Math.max(hi - lo, 1e-9);
    const span = Math.max(hi - lo, 1e-4);
    return [lo - 0.06 * span, hi + 0.1 * span];
  }

  function shortText(text, n) {
    text = String(text).replace(/\s+/g, " ").trim();
    return text.length <= n ? text : text.slice(0, n - 1) + "…";
  }

  const LABEL_SIN = Math.sin((28 * Math.PI) / 180);
  const LABEL_COS = Math.cos((28 * Math.PI) / 180);
  const LABEL_GAP = 12; // px between two labels' baselines

  function pointToSegment(px, py, s) {
    const dx = s.x2 - s.x1, dy = s.y2 - s.y1;
    const t = Math.max(0, Math.min(1, ((px - s.x1) * dx + (py - s.y1) * dy) / (dx * dx + dy * dy || 1)));
    return Math.hypot(px - (s.x1 + t * dx), py - (s.y1 + t * dy));
  }

  // Where an improvement's label goes: up and to the right of its dot, or up and to the left
  // when it would run off the chart; null when it would overlap a label already placed.
  function placeLabel(cx, cy, length, width, placed) {
    for (const flip of [false, true]) {
      const x = flip ? cx - 7 : cx + 7, y = cy - 7;
      const seg = flip
        ? { x1: x - length * LABEL_COS, y1: y - length * LABEL_SIN, x2: x, y2: y }
        : { x1: x, y1: y, x2: x + length * LABEL_COS, y2: y - length * LABEL_SIN };
      // Off the chart: up and to the left instead (only then: that side covers earlier points).
      if (seg.x2 > width - 2 || seg.x1 < 2 || Math.min(seg.y1, seg.y2) < 4) continue;
      let clash = false;
      for (let t = 0; t <= 1 && !clash; t += 8 / length) {
        const px = seg.x1 + t * (seg.x2 - seg.x1), py = seg.y1 + t * (seg.y2 - seg.y1);
        clash = placed.some((q) => pointToSegment(px, py, q) < LABEL_GAP);
      }
      return clash ? null : Object.assign(seg, { x: x, y: y, flip: flip });
    }
    return null;
  }

  function renderLegend(data) {
    const agents = data.agents.map((a) =>
      `<span class=key><svg width=12 height=12><circle cx=6 cy=6 r=5 fill="${esc(a.color)}"/></svg>${esc(a.name)}</span>`
    ).join("");
    const noise = data.noise;
    const band = noise.baseline_mean == null ? "" :
      `<span class=key><svg width=18 height=12><rect x=0 y=1 width=18 height=10 fill="#888" fill-opacity=.2 /></svg>` +
      `baseline ${fmt(noise.baseline_mean, 4)} ± ${fmt(noise.threshold, 4)}${noise.measured ? "" : " (assumed noise)"}</span>`;
    document.getElementById("legend").innerHTML = agents +
      `<span class=key><svg width=12 height=12><circle cx=6 cy=6 r=5 fill="#fff" stroke="#111" stroke-width=1.5 /></svg>improved (labelled)</span>` +
      `<span class=key><svg width=12 height=12><circle cx=6 cy=6 r=4 fill="none" stroke="#666" stroke-width=1.5 /></svg>disqualified</span>` +
      `<span class=key><svg width=12 height=12><path d="M2 2L10 10M10 2L2 10" stroke="#666" stroke-width=2 /></svg>failed (top edge)</span>` +
      `<span class=key><svg width=22 height=12><path d="M1 3H11V9H21" fill="none" stroke="#222" stroke-width=2 /></svg>running best</span>` +
      band;
  }

  function renderChart(data) {
    const box = document.getElementById("chart");
    const W = Math.max(640, box.clientWidth || 1000);
    const H = Math.max(380, Math.min(560, Math.round(W * 0.42)));
    const m = { l: 76, r: 28, t: 48, b: 48 };
    const points = data.points;
    const n = Math.max(points.length, 1);
    // Values are laid out oriented (lower = better); a maximized metric's axis runs upward.
    const sign = data.direction === "maximize" ? -1 : 1;
    const values = points.filter((p) => p.metric_value != null).map((p) => sign * p.metric_value);
    const oriented = { ...data.noise, baseline_mean: data.noise.baseline_mean == null ? null : sign * data.noise.baseline_mean };
    const [lo, hi] = yRange(values, oriented);
    const xMax = n - 0.5 + Math.max(1, n * 0.02);
    const x = (i) => m.l + ((i + 0.5) / (xMax + 0.5)) * (W - m.l - m.r);
    const y = (o) => m.t + ((sign > 0 ? hi - o : o - lo) / (hi - lo)) * (H - m.t - m.b);
    const yOf = (value) => y(sign * value);
    const colors = Object.fromEntries(data.agents.map((a) => [a.name, a.color]));
    const parts = [];
    parts.push(`<svg xmlns="${SVG_NS}" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role=img>`);
    parts.push(`<defs><clipPath id=plot-clip><rect x=${m.l} y=${m.t} width=${W - m.l - m.r} height=${H - m.t - m.b} /></clipPath></defs>`);
    // Grid and axes.
    const yt = ticks(lo, hi, 7);
    const yd = decimals(yt.step);
    for (const v of yt.values) {
      parts.push(`<line class=grid x1=${m.l} x2=${W - m.r} y1=${y(v)} y2=${y(v)} />`);
      parts.push(`<text class=tick x=${m.l - 8} y=${y(v) + 4} text-anchor=end>${(sign * v).toFixed(yd)}</text>`);
    }
    const xt = ticks(0, n - 1, Math.min(10, n));
    for (const v of xt.values) {
      if (v !== Math.round(v)) continue;
      parts.push(`<line class=grid x1=${x(v)} x2=${x(v)} y1=${m.t} y2=${H - m.b} />`);
      parts.push(`<text class=tick x=${x(v)} y=${H - m.b + 18} text-anchor=middle>${v}</text>`);
    }
    parts.push(`<rect class=frame x=${m.l} y=${m.t} width=${W - m.l - m.r} height=${H - m.t - m.b} />`);
    parts.push(`<text class=axis x=${(m.l + W - m.r) / 2} y=${H - 8} text-anchor=middle>experiment # (finished, in order)</text>`);
    parts.push(`<text class=axis transform="translate(18 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor=middle>${esc(data.metric)} (${sign > 0 ? "lower" : "higher"} is better)</text>`);
    parts.push(`<text class=tick x=${m.l - 8} y=${m.t - 14} text-anchor=end>failed</text>`);
    // The baseline's noise band.
    const noise = data.noise;
    parts.push(`<g clip-path="url(#plot-clip)">`);
    if (noise.baseline_mean != null) {
      const top = Math.min(yOf(noise.baseline_mean + noise.threshold), yOf(noise.baseline_mean - noise.threshold));
      const bottom = Math.max(yOf(noise.baseline_mean + noise.threshold), yOf(noise.baseline_mean - noise.threshold));
      parts.push(`<rect class=band x=${m.l} y=${top} width=${W - m.l - m.r} height=${Math.max(0, bottom - top)} />`);
      parts.push(`<line class=band-mean x1=${m.l} x2=${W - m.r} y1=${yOf(noise.baseline_mean)} y2=${yOf(noise.baseline_mean)} />`);
      parts.push(`<text class=band-label x=${W - m.r - 6} y=${yOf(noise.baseline_mean) - 5} text-anchor=end>baseline ± noise threshold</text>`);
    }
    // The running best as a step line.
    if (data.best.length) {
      let d = `M${x(data.best[0].index)} ${yOf(data.best[0].metric_value)}`;
      for (const step of data.best.slice(1)) d += `H${x(step.index)}V${yOf(step.metric_value)}`;
      d += `H${x(n - 1)}`;
      parts.push(`<path class=best d="${d}" />`);
    }
    parts.push(`</g>`);
    // The dots: plain runs first, improvements on top.
    const wins = [];
    for (const p of points) {
      const color = colors[p.agent] || "#555";
      const tip = `#${p.id} ${p.agent} · ${p.status}${p.metric_value != null ? " · " + p.metric_value.toFixed(6) : ""}` +
        `${p.verdict ? " · " + p.verdict : ""}\n${p.description}`;
      const attrs = `class="dot ${p.verdict === "improved" ? "improved" : ""}" data-id=${p.id} data-agent="${esc(p.agent)}"`;
      const cx = x(p.index);
      if (p.metric_value == null) {
        const cy = m.t - 14;
        parts.push(`<path ${attrs} d="M${cx - 4} ${cy - 4}L${cx + 4} ${cy + 4}M${cx + 4} ${cy - 4}L${cx - 4} ${cy + 4}" stroke="${color}" stroke-width=2><title>${esc(tip)}</title></path>`);
      } else if (sign * p.metric_value > hi) {
        const cy = sign > 0 ? m.t + 6 : H - m.b - 6;
        parts.push(`<path ${attrs} d="M${cx} ${cy - 5}L${cx + 4} ${cy + 2}L${cx - 4} ${cy + 2}Z" fill="${color}" fill-opacity=.6><title>${esc(tip + "\n(off the scale)")}</title></path>`);
      } else if (p.verdict === "improved") {
        wins.push({ p, cx, cy: yOf(p.metric_value), color, attrs, tip });
      } else if (p.disqualified) {
        parts.push(`<circle ${attrs} cx=${cx} cy=${yOf(p.metric_value)} r=4 fill="#fff" fill-opacity=0 stroke="${color}" stroke-width=1.5><title>${esc(tip + "\n(disqualified)")}</title></circle>`);
      } else {
        parts.push(`<circle ${attrs} cx=${cx} cy=${yOf(p.metric_value)} r=${p.kind === "baseline" ? 5 : 4} fill="${color}" fill-opacity=.45><title>${esc(tip)}</title></circle>`);
      }
    }
    // Improvements: a larger outlined dot and its description. The best first; a label that
    // would overlap one already placed is left out (the dot stays, its tooltip has the text).
    const placed = [];
    for (const w of wins) {
      parts.push(`<circle ${w.attrs} cx=${w.cx} cy=${w.cy} r=6.5 fill="${w.color}" stroke="#111" stroke-width=1.2><title>${esc(w.tip)}</title></circle>`);
    }
    for (const w of wins.slice().sort((a, b) => sign * (a.p.metric_value - b.p.metric_value) || a.p.index - b.p.index)) {
      const text = shortText(w.p.description, 44);
      const label = placeLabel(w.cx, w.cy, text.length * 6.3, W, placed);
      if (!label) continue;
      placed.push(label);
      const anchor = label.flip ? "end" : "start";
      parts.push(`<text class=win-label x=${label.x} y=${label.y} fill="${w.color}" text-anchor=${anchor} transform="rotate(${label.flip ? 28 : -28} ${label.x} ${label.y})" data-id=${w.p.id}>${esc(text)}</text>`);
    }
    if (!points.length) {
      parts.push(`<text class=axis x=${W / 2} y=${H / 2} text-anchor=middle>no finished experiments yet</text>`);
    }
    parts.push(`</svg>`);
    box.innerHTML = parts.join("");
    box.dataset.points = String(points.length);
  }

  function renderLeaderboard(board) {
    const rows = board.entries.map((e) =>
      `<tr data-id=${e.id}><td>${e.rank}</td><td><a href="/experiments/${e.id}">#${e.id}</a></td>` +
      `<td><span class=swatch style="background:${esc(agentColor(e.agent))}"></span>${esc(e.agent)}</td>` +
      `<td class="num val">${fmt(e.metric_value, 6)}</td><td class=num>${e.sd == null ? "—" : fmt(e.sd, 6)}</td>` +
      `<td class=num>${e.runs}${e.confirmed ? " ✓" : ""}</td>` +
      `<td class="num holdout"${e.holdout_flag ? ` title="${esc(e.holdout_flag)}"` : ""}>` +
      `${e.holdout_value == null ? "—" : fmt(e.holdout_value, 6)}${e.holdout_flag ? " ⚠" : ""}</td>` +
      `<td class=desc>${esc(e.description)}</td></tr>`
    ).join("");
    document.querySelector("#leaderboard tbody").innerHTML =
      rows || `<tr><td colspan=8 class=muted>no successful experiment yet on this hardware and budget</td></tr>`;
    const agents = board.per_agent.map((a) =>
      `<tr data-agent="${esc(a.agent)}"${a.best_id != null ? ` data-id=${a.best_id}` : ""}>` +
      `<td><span class=swatch style="background:${esc(agentColor(a.agent))}"></span>${esc(a.agent)}</td>` +
      `<td class="num val">${fmt(a.best_metric_value, 6)}</td>` +
      `<td>${a.best_id != null ? `<a href="/experiments/${a.best_id}">#${a.best_id}</a>` : "—"}</td>` +
      `<td class=num>${a.experiments}</td><td class=num>${a.improvements}</td></tr>`
    ).join("");
    document.querySelector("#per-agent tbody").innerHTML =
      agents || `<tr><td colspan=5 class=muted>no agent has run an experiment yet</td></tr>`;
  }

  function agentColor(name) {
    const hit = chartData && chartData.agents.find((a) => a.name === name);
    return hit ? hit.color : "#888";
  }

  function renderQueue(queue) {
    const running = queue.running.map((r) => {
      const share = r.total > 0 ? Math.min(100, (100 * r.done) / r.total) : 0;
      return `<div class=run data-id=${r.id}><div><a href="/experiments/${r.id}">#${r.id}</a> ` +
        `<span class=swatch style="background:${esc(agentColor(r.agent))}"></span>${esc(r.agent)} · ${esc(r.description)}</div>` +
        `<div class=bar><div style="width:${share.toFixed(1)}%"></div></div>` +
        `<div class=muted>${esc(r.message)}</div></div>`;
    }).join("");
    const queued = queue.queued.map((q) =>
      `<tr data-id=${q.id}><td class=num>${q.position}</td><td><a href="/experiments/${q.id}">#${q.id}</a></td>` +
      `<td><span class=swatch style="background:${esc(agentColor(q.agent))}"></span>${esc(q.agent)}</td>` +
      `<td>${esc(q.kind)}</td><td class=desc>${esc(q.description)}</td></tr>`
    ).join("");
    document.getElementById("queue").innerHTML =
      (running || `<p class=muted>nothing running (slots: ${esc(queue.slots.join(", "))})</p>`) +
      (queued ? `<table class=rows><thead><tr><th class=num>pos</th><th>id</th><th>agent</th><th>kind</th><th>description</th></tr></thead><tbody>${queued}</tbody></table>`
        : `<p class=muted>the queue is empty</p>`);
  }

  async function refreshRecord() {
    const [chart, board] = await Promise.all([getJSON("/api/chart"), getJSON("/api/leaderboard")]);
    chartData = chart;
    document.getElementById("title").textContent = "· " + chart.title;
    document.title = "autoresearch · " + chart.title;
    renderLegend(chart);
    renderChart(chart);
    renderLeaderboard(board);
  }

  async function poll() {
    const live = document.getElementById("live");
    try {
      const queue = await getJSON("/api/queue");
      if (queue.record_version !== recordVersion) {
        await refreshRecord();
        recordVersion = queue.record_version;
      }
      renderQueue(queue);
      live.textContent = "· live, updated " + new Date().toLocaleTimeString();
      live.classList.remove("bad");
    } catch (err) {
      live.textContent = "· not updating: " + err.message;
      live.classList.add("bad");
    }
    setTimeout(poll, POLL_MS);
  }

  // A click on a dot or a row opens that experiment.
  document.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    const hit = event.target.closest("[data-id]");
    if (hit && (hit.closest("#chart") || hit.closest("tbody") || hit.closest("#queue"))) {
      location.href = "/experiments/" + hit.dataset.id;
    }
  });

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => chartData && renderChart(chartData), 150);
  });

  poll();
})();
