// nasforge dashboard: polls /api/snapshot and draws it. Read-only: it only GETs.
// Every string from the store (errors, arch labels, workers) goes in with textContent.
"use strict";

(function () {
  const meta = document.querySelector('meta[name="nasforge-refresh-ms"]');
  const REFRESH_MS = Math.max(250, Number(meta && meta.content) || 2000);
  const TOP_CURVES = 5;
  const SUPERNET_SHOWN = new Set(["val_acc", "train_acc", "train_loss", "val_loss", "loss", "acc"]);
  const FINISHED = new Set(["complete", "failed"]);
  const state = { selected: null, details: new Map(), edge: null, snap: null };
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function num(v, digits) {
    if (typeof v !== "number" || !isFinite(v)) return v === null || v === undefined ? "-" : String(v);
    if (digits !== undefined) return v.toFixed(digits);
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4);
  }

  function duration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "-";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const pad = (x) => String(x).padStart(2, "0");
    if (h) return h + "h " + pad(m) + "m";
    if (m) return m + "m " + pad(sec) + "s";
    return sec + "s";
  }

  function clock(t) {
    return typeof t === "number" ? new Date(t * 1000).toLocaleTimeString() : "-";
  }

  function plotly() {
    return typeof window.Plotly === "undefined" ? null : window.Plotly;
  }

  function plot(id, traces, layout, empty) {
    const div = $(id);
    const P = plotly();
    if (!P) {
      div.textContent = "plotly.min.js did not load";
      return;
    }
    const blank = !traces.some((t) => t.x && t.x.length);
    const note = blank && empty ? [{ text: empty, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] : [];
    const base = {
      annotations: note,
      margin: { l: 55, r: 15, t: 10, b: 45 },
      uirevision: "keep",
      showlegend: traces.length > 1,
      legend: { orientation: "h", y: -0.25 },
      hovermode: "closest",
    };
    P.react(div, traces, Object.assign(base, layout), { displaylogo: false, responsive: true });
  }

  function setError(message) {
    const box = $("store-error");
    if (message) {
      box.textContent = message;
      box.hidden = false;
    } else {
      box.hidden = true;
    }
  }

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    let body = null;
    try {
      body = await r.json();
    } catch (e) {
      body = null;
    }
    if (!r.ok) {
      const why = body && body.error ? body.error : r.status + " " + r.statusText;
      const err = new Error(r.status === 503 ? why : "dashboard: " + why);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  async function poll() {
    try {
      const snap = await getJSON("/api/snapshot");
      setError(null);
      state.snap = snap;
      await render(snap);
    } catch (e) {
      const msg = e.status ? e.message : "dashboard server unreachable, retrying: " + e.message;
      setError(msg.startsWith("waiting") ? msg + " (retrying)" : msg);
    } finally {
      setTimeout(poll, REFRESH_MS);
    }
  }

  function renderHeader(s) {
    const run = s.run || {};
    $("run-name").textContent = run.name || "nasforge";
    document.title = (run.name || "run") + " - nasforge dashboard";
    const status = $("run-status");
    status.textContent = run.status || "unknown";
    status.dataset.status = run.status || "unknown";
    const obj = run.objective || {};
    const parts = [];
    if (run.kind) parts.push(run.kind);
    if (obj.metric) parts.push("objective " + obj.metric + (obj.mode ? " (" + obj.mode + ")" : ""));
    if (run.dir) parts.push(run.dir);
    $("run-meta").textContent = parts.join(" · ");
    const p = s.progress || {};
    const asOf = $("as-of");
    asOf.dataset.asOf = String(run.as_of);
    asOf.dataset.complete = String(p.complete);
    asOf.textContent = "as of " + clock(run.as_of) + (run.lock_held ? "" : " · no process holds the run");
  }

  function renderProgress(p) {
    const done = (p.complete || 0) + (p.failed || 0);
    const bar = $("progress-bar");
    bar.style.width = p.total ? Math.min(100, (100 * done) / p.total) + "%" : "0";
    const bits = [(p.complete || 0) + (p.total ? " of " + p.total : "") + " complete"];
    for (const k of ["failed", "running", "interrupted"]) if (p[k]) bits.push(p[k] + " " + k);
    if (typeof p.epochs_done === "number") {
      bits.push("supernet epoch " + p.epochs_done + (p.epochs_total ? " of " + p.epochs_total : ""));
    }
    bits.push("elapsed " + duration(p.elapsed_s));
    bits.push("ETA " + (p.eta_s === null || p.eta_s === undefined ? "unknown" : duration(p.eta_s)));
    if (typeof p.cost_seconds === "number") bits.push("cost " + num(p.cost_seconds, 1) + " device-s");
    $("progress-text").textContent = bits.join(" · ");
  }

  function renderLeaderboard(s) {
    const cols = s.columns || [];
    const table = $("leaderboard");
    const head = el("tr");
    for (const c of ["#", "trial", "score"].concat(cols, ["cost s", "worker"])) head.appendChild(el("th", c));
    table.tHead.replaceChildren(head);
    const rows = (s.leaderboard || []).map((t) => {
      const tr = el("tr");
      tr.dataset.trialId = String(t.id);
      if (t.id === state.selected) tr.className = "selected";
      tr.appendChild(el("td", t.rank, "rank"));
      tr.appendChild(el("td", t.id, "trial"));
      tr.appendChild(el("td", num(t.score, 4), "score"));
      for (const c of cols) {
        const td = el("td", num((t.metrics || {})[c]), "metric");
        td.dataset.metric = c;
        tr.appendChild(td);
      }
      tr.appendChild(el("td", num(t.cost_seconds, 1), "cost"));
      tr.appendChild(el("td", t.worker || "-", "worker"));
      tr.addEventListener("click", () => select(t.id));
      return tr;
    });
    table.tBodies[0].replaceChildren(...rows);
    $("leaderboard-empty").hidden = rows.length > 0;
  }

  function renderTrials(s) {
    const rows = (s.trials || []).map((t) => {
      const tr = el("tr");
      tr.dataset.trialId = String(t.id);
      if (t.id === state.selected) tr.className = "selected";
      tr.appendChild(el("td", t.id));
      tr.appendChild(el("td", t.state));
      tr.appendChild(el("td", num(t.score, 4)));
      const err = el("td", t.error_line || "", "err");
      err.title = t.error_line || "";
      tr.appendChild(err);
      tr.addEventListener("click", () => select(t.id));
      return tr;
    });
    $("trials").tBodies[0].replaceChildren(...rows);
  }

  function renderPoints(s) {
    const pts = s.points || [];
    const obj = (s.run || {}).objective || {};
    const axes = s.axes || {};
    const trace = (sel, name, extra) =>
      Object.assign(
        {
          x: sel.map((p) => p.x),
          y: sel.map((p) => p.y),
          customdata: sel.map((p) => p.id),
          text: sel.map((p) => "trial " + p.id),
          name: name,
          hovertemplate: "%{text}<br>x %{x}<br>y %{y}<extra></extra>",
        },
        extra
      );
    const cost = axes.x === "latency_ms" ? "latency (ms)" : axes.x;
    $("pareto-title").textContent = cost ? (axes.y || "accuracy") + " vs " + cost : "Accuracy vs latency";
    const front = pts.filter((p) => p.pareto).sort((a, b) => a.x - b.x);
    plot(
      "plot-pareto",
      [
        trace(pts.filter((p) => !p.pareto), "trials", { mode: "markers", type: "scatter", marker: { color: "#9aa5b1" } }),
        trace(front, "Pareto front", { mode: "lines+markers", type: "scatter", line: { shape: "hv", color: "#d1495b" } }),
      ],
      {
        xaxis: { title: { text: axes.x || "no cost metric in this run" } },
        yaxis: { title: { text: axes.y || obj.metric || "accuracy" } },
      },
      "no complete trial yet"
    );
    const div = $("plot-pareto");
    if (div.on && !div.dataset.clicks) {
      div.dataset.clicks = "1";
      div.on("plotly_click", (ev) => ev.points.length && select(ev.points[0].customdata));
    }
  }

  function renderBest(s) {
    const b = s.best_so_far || [];
    plot(
      "plot-best",
      [
        {
          x: b.map((p) => p.t),
          y: b.map((p) => p.score),
          text: b.map((p) => "trial " + p.id),
          mode: "lines+markers",
          type: "scatter",
          line: { shape: "hv" },
          name: "best score",
        },
      ],
      { xaxis: { title: { text: "seconds since the first trial" } }, yaxis: { title: { text: "score" } } },
      "no complete trial yet"
    );
  }

  async function detail(id) {
    const cached = state.details.get(id);
    if (cached && FINISHED.has(cached.state)) return cached;
    const d = await getJSON("/api/trial/" + encodeURIComponent(id));
    state.details.set(id, d);
    return d;
  }

  async function renderCurves(s) {
    const ids = (s.leaderboard || []).slice(0, TOP_CURVES).map((t) => t.id);
    // running trials' curves so far (epochs reported while they train), drawn dashed
    const live = s.live || {};
    for (const k of Object.keys(live)) if (!ids.includes(Number(k))) ids.push(Number(k));
    if (state.selected !== null && !ids.includes(state.selected)) ids.push(state.selected);
    const traces = [];
    const snapCurves = s.curves || {};
    for (const id of ids) {
      let curve = snapCurves[String(id)];
      let running = String(id) in live;
      if (!curve) {
        try {
          const d = await detail(id);
          curve = d.curve || [];
          running = running || d.live === true;
        } catch (e) {
          continue; // a trial the store no longer has (a repaired run): skip its curve
        }
      }
      traces.push({
        x: curve.map((_, i) => i + 1),
        y: curve,
        mode: "lines+markers",
        type: "scatter",
        name: "trial " + id + (running ? " (running)" : ""),
        line: { width: id === state.selected ? 4 : 2, dash: running ? "dash" : "solid" },
      });
    }
    plot(
      "plot-curves",
      traces,
      { xaxis: { title: { text: "epoch" }, dtick: 1 }, yaxis: { title: { text: "validation accuracy" } } },
      "no learning curve recorded (yet): trials scored without training have none"
    );
  }

  async function renderDetail(s) {
    let id = state.selected;
    if (id === null && s.leaderboard && s.leaderboard.length) id = s.leaderboard[0].id;
    if (id === null && s.trials && s.trials.length) id = s.trials[0].id;
    if (id === null) return;
    let d;
    try {
      d = await detail(id);
    } catch (e) {
      $("trial-id").textContent = String(id);
      $("trial-error").textContent = e.message;
      return;
    }
    $("trial-id").textContent = String(d.id);
    const facts = [
      ["state", d.state],
      ["score", num(d.score, 4)],
      ["key", d.key],
      ["worker", d.worker || "-"],
      ["cost", num(d.cost_seconds, 1) + " s"],
      ["created", clock(d.created)],
      ["finished", d.live ? "running (curve so far)" : clock(d.finished)],
    ];
    for (const [k, v] of Object.entries(d.metrics || {})) facts.push([k, num(v)]);
    const dl = $("trial-facts");
    dl.replaceChildren();
    for (const [k, v] of facts) {
      dl.appendChild(el("dt", k));
      dl.appendChild(el("dd", v));
    }
    $("trial-arch").textContent = JSON.stringify(d.arch, null, 2);
    $("trial-error").textContent = d.error || "(none)";
  }

  function renderOneshot(s) {
    const os = s.oneshot;
    const card = $("oneshot-card");
    const alphas = (os && os.alphas) || {};
    const edges = Object.keys(alphas);
    card.hidden = edges.length === 0;
    if (edges.length) {
      const select = $("alpha-edge");
      if (select.options.length !== edges.length) {
        select.replaceChildren(
          ...edges.map((e) => {
            const o = el("option", alphas[e].name || e);
            o.value = e;
            return o;
          })
        );
      }
      if (!state.edge || !edges.includes(state.edge)) state.edge = edges[0];
      select.value = state.edge;
      const a = alphas[state.edge];
      const epochs = a.epochs || [];
      const numbers = a.epoch_numbers || [];
      plot(
        "plot-alphas",
        (a.ops || []).map((op, j) => ({
          x: epochs.map((_, i) => (typeof numbers[i] === "number" ? numbers[i] : i + 1)),
          y: epochs.map((row) => row[j]),
          mode: "lines+markers",
          type: "scatter",
          name: op,
        })),
        { xaxis: { title: { text: "epoch" }, dtick: 1 }, yaxis: { title: { text: "weight (softmax)" } } }
      );
    }
    const sup = (os && os.epochs) || (s.ofa && s.ofa.epochs) || [];
    $("supernet-card").hidden = sup.length === 0;
    if (sup.length) {
      const keys = new Set();
      for (const r of sup) for (const [k, v] of Object.entries(r)) if (k !== "epoch" && typeof v === "number") keys.add(k);
      plot(
        "plot-supernet",
        [...keys].map((k) => ({
          x: sup.map((r, i) => (typeof r.epoch === "number" ? r.epoch : i + 1)),
          y: sup.map((r) => (typeof r[k] === "number" ? r[k] : null)),
          mode: "lines+markers",
          type: "scatter",
          name: k,
          // many records per epoch on different scales: the main ones shown, the rest a click away
          visible: SUPERNET_SHOWN.has(k) ? true : "legendonly",
        })),
        { xaxis: { title: { text: "epoch" } } }
      );
    }
  }

  async function render(s) {
    renderHeader(s);
    renderProgress(s.progress || {});
    renderLeaderboard(s);
    renderTrials(s);
    renderPoints(s);
    renderBest(s);
    renderOneshot(s);
    await renderDetail(s);
    await renderCurves(s);
  }

  function select(id) {
    state.selected = id;
    for (const tr of document.querySelectorAll("tr[data-trial-id]")) {
      tr.classList.toggle("selected", tr.dataset.trialId === String(id));
    }
    if (state.snap) {
      renderDetail(state.snap).catch(() => {});
      renderCurves(state.snap).catch(() => {});
    }
  }

  $("alpha-edge").addEventListener("change", (ev) => {
    state.edge = ev.target.value;
    if (state.snap) renderOneshot(state.snap);
  });

  poll();
})();
