/* ALKN dashboard: a hash-routed page over the JSON API (/v1, Bearer key).
 * Every server-provided string reaches the page as a text node or a property, never as
 * HTML. The key lives in sessionStorage (localStorage when "remember" is ticked). */
"use strict";

(() => {
  const KEY = "alkn.apiKey";
  const METHODS = ["alkn", "task_vector", "grad_ascent", "grad_diff", "npo", "npo_gd"];
  const FINISHED = ["succeeded", "failed", "cancelled"];
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777",
                  "#0891b2", "#65a30d", "#9333ea", "#475569"];
  const POLL_MS = 1000;
  const main = document.getElementById("main");
  let liveToken = 0;         // bumped on navigation: stops the previous page's polling
  let charts = [];           // {plot, observer} of the current page's charts
  let followRequest = null;  // a request just submitted: open its job as soon as it has one

  // ---------------------------------------------------------------- DOM (text only)

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k in el && typeof v !== "string") el[k] = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function dropCharts(keep = () => false) {
    charts = charts.filter((c) => {
      if (keep(c)) return true;
      c.observer.disconnect();
      c.plot.destroy();
      return false;
    });
  }

  function show(...children) {
    dropCharts();
    main.replaceChildren();
    append(main, children);
  }

  const link = (href, text, attrs) => h("a", {href, ...attrs}, text);
  const badge = (status) => h("span", {class: "badge s-" + status, "data-status": status},
                              status);
  // The quality gate (`quality` of a version or job): red when it did not pass; the version
  // is served all the same (forgetting wins), the badge's title says why.
  const qualityBadge = (q) => (q && q.passed === false
    ? h("span", {class: "badge s-quality-failed", "data-quality": "failed",
                 title: q.message || "below the utility floor"}, "quality failed")
    : null);
  const enc = encodeURIComponent;
  const short = (id) => (id ? String(id).slice(0, 8) : "");

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }

  function fmtSeconds(s) {
    s = Math.max(0, Math.round(Number(s) || 0));
    if (s < 90) return s + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  const fmtNum = (x, digits = 3) =>
    (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–");

  // `rows`: the rows, or a <tbody> of them the caller keeps appending to.
  function table(headers, rows, attrs) {
    const body = rows instanceof HTMLTableSectionElement ? rows : h("tbody", {}, rows);
    return h("div", {class: "scroll"}, h("table", attrs,
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))), body));
  }

  function kv(pairs) {
    return h("dl", {class: "kv"}, pairs.filter((p) => p[1] !== null && p[1] !== undefined &&
      p[1] !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  }

  function errorBox(err) {
    const p = err && err.problem;
    const lines = (p && Array.isArray(p.errors) ? p.errors : [])
      .map((e) => h("li", {}, (e.loc || []).join(".") + ": " + (e.msg || "")));
    return h("div", {class: "box error", role: "alert"},
      h("strong", {}, p ? (p.title || "Error") + " (" + p.status + ")" : "Error"), " ",
      (p && p.detail) || (err && err.message) || String(err),
      lines.length ? h("ul", {}, lines) : null);
  }

  // ---------------------------------------------------------------- key and API

  const getKey = () => sessionStorage.getItem(KEY) || localStorage.getItem(KEY);

  function setKey(key, remember) {
    clearKey();
    (remember ? localStorage : sessionStorage).setItem(KEY, key);
  }

  function clearKey() {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
  }

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && problem.detail) || "HTTP " + status);
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(path, options = {}, key = getKey()) {
    const headers = {Accept: "application/json", Authorization: "Bearer " + key,
                     ...(options.headers || {})};
    const r = await fetch(path, {...options, headers}); // relative: works under a prefix
    const type = r.headers.get("content-type") || "";
    const body = type.includes("json") ? await r.json() : null;
    if (r.status === 401 && key === getKey()) {
      clearKey();
      location.hash = "#/login";
    }
    if (!r.ok) throw new ApiError(r.status, body);
    return body;
  }

  async function allPages(path) {
    const items = [];
    let cursor = null;
    do {
      const sep = path.includes("?") ? "&" : "?";
      const page = await api(path + sep + "limit=500" + (cursor ? "&cursor=" + enc(cursor) : ""));
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && items.length < 5000);
    return items;
  }

  function randomKey() {  // crypto.randomUUID needs a secure context; this does not
    const b = crypto.getRandomValues(new Uint8Array(16));
    return "dash-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  // ---------------------------------------------------------------- live updates

  function live(fn) {
    const token = ++liveToken;
    const tick = async () => {
      if (token !== liveToken) return;
      let again = true;
      try {
        again = await fn(() => token === liveToken);
      } catch (err) {
        if (token !== liveToken) return;
        show(errorBox(err));
        // A 4xx will not change by asking again; a restart or a network blip will pass.
        if (!(err instanceof ApiError && err.status < 500)) setTimeout(tick, 5 * POLL_MS);
        return;
      }
      if (again && token === liveToken) setTimeout(tick, document.hidden ? 5 * POLL_MS : POLL_MS);
    };
    return tick();
  }

  // ---------------------------------------------------------------- views

  function viewLogin() {
    const input = h("input", {type: "password", id: "api-key", name: "key", required: true,
                              autocomplete: "current-password", placeholder: "API key"});
    const remember = h("input", {type: "checkbox", id: "remember"});
    const status = h("div", {});
    const form = h("form", {class: "card narrow", id: "login", onsubmit: async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      status.replaceChildren();
      try {
        await api("v1/models?limit=1", {}, key);
        setKey(key, remember.checked);
        location.hash = "#/models";
      } catch (err) {
        status.append(errorBox(err.status === 401
          ? new ApiError(401, {title: "Unauthorized", status: 401,
                               detail: "this key is not valid"}) : err));
      }
    }},
    h("h1", {}, "Sign in"),
    h("p", {class: "muted"}, "Paste an API key (", h("code", {}, "alkn keys create --tenant NAME"),
      " prints one). It is kept in this tab only, unless you tick the box."),
    h("label", {for: "api-key"}, "API key"), input,
    h("label", {class: "check"}, remember, " Remember on this device"),
    h("button", {type: "submit"}, "Sign in"), status);
    show(form);
    input.focus();
  }

  async function viewModels() {
    const body = h("tbody", {});
    const more = h("button", {type: "button", class: "secondary", hidden: true});
    let cursor = null;
    const load = async () => {
      const page = await api("v1/models?limit=50" + (cursor ? "&cursor=" + enc(cursor) : ""));
      for (const m of page.items) {
        const aliases = Object.entries(m.aliases || {}).map(([a, v]) => a + " → v" + v);
        body.append(h("tr", {},
          h("td", {}, link("#/models/" + enc(m.name), m.name, {class: "model-link"})),
          h("td", {}, m.description || ""),
          h("td", {class: "num"}, m.latest_version ? "v" + m.latest_version : "–"),
          h("td", {}, aliases.join(", ")),
          h("td", {}, fmtTime(m.created_at))));
      }
      cursor = page.next_cursor;
      more.hidden = !cursor;
      return page.items.length;
    };
    more.textContent = "Load more";
    more.addEventListener("click", load);
    const n = await load();
    show(h("h1", {}, "Models"),
      n ? table(["Model", "Description", "Latest", "Aliases", "Registered"], body,
                {id: "models"})
        : h("p", {class: "muted"}, "No models yet: register one with POST /v1/models."),
      more);
  }

  // Evaluation of each version: its own job's "after", or for a base version the "before"
  // of the first job that started from it (root versions are evaluated only that way).
  function evaluations(versions) {
    const ev = new Map();
    for (const v of versions) if (v.metrics && v.metrics.after) ev.set(v.version, v.metrics.after);
    for (const v of versions) {
      const base = v.parent_version;
      if (v.metrics && v.metrics.before && base !== null && !ev.has(base)) {
        ev.set(base, v.metrics.before);
      }
    }
    return ev;
  }

  const metricOf = (set, metric) =>
    (set && typeof set[metric] === "number" ? set[metric] : null);

  // Forgetting: one line per task (the forget set of the version it produced), from its
  // base (before) through the versions after it ("task/vN" in their evaluations).
  function forgetSeries(versions, metric) {
    const xs = versions.map((v) => v.version);
    const ev = evaluations(versions);
    const series = [];
    for (const v of versions) {
      if (!v.metrics || !v.metrics.after) continue;
      const ys = xs.map((x) => {
        if (x === v.version) return metricOf(v.metrics.after.forget, metric);
        if (x === v.parent_version) return metricOf((v.metrics.before || {}).forget, metric);
        const later = x > v.version ? ev.get(x) : null;
        return later ? metricOf(later["task/v" + v.version], metric) : null;
      });
      series.push({label: "forget set of v" + v.version, ys});
    }
    return {xs, series};
  }

  function utilitySeries(versions) {
    const xs = versions.map((v) => v.version);
    const ev = evaluations(versions);
    const evalNames = new Set();
    for (const e of ev.values()) {
      for (const k of Object.keys(e)) if (k.startsWith("eval/")) evalNames.add(k);
    }
    const series = [
      {label: "model utility", ys: xs.map((x) => (ev.has(x) ? ev.get(x).model_utility ?? null : null))},
      {label: "retain probability", ys: xs.map((x) => metricOf((ev.get(x) || {}).retain, "probability"))},
      ...[...evalNames].sort().map((name) => ({
        label: name.slice(5) + " probability",
        ys: xs.map((x) => metricOf((ev.get(x) || {})[name], "probability"))})),
    ];
    return {xs, series: series.filter((s) => s.ys.some((y) => y !== null))};
  }

  function chart(container, {xs, series}, yLabel) {
    if (!series.length || typeof uPlot === "undefined") {
      container.replaceChildren(h("p", {class: "muted"}, "No evaluations yet: the chart " +
        "fills in once a forget request has produced a version."));
      return;
    }
    container.replaceChildren();
    const width = () => Math.max(240, container.clientWidth || 600);
    const u = new uPlot({
      width: width(), height: 240,
      scales: {x: {time: false}, y: {range: [0, 1]}},
      axes: [
        {label: "version", incrs: [1, 2, 5, 10, 20, 50, 100],
         values: (_, vals) => vals.map((v) => (Number.isInteger(v) ? "v" + v : ""))},
        {label: yLabel, size: 50},
      ],
      series: [{label: "version", value: (_, v) => (v === null ? "–" : "v" + v)},
        ...series.map((s, i) => ({
          label: s.label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
          points: {show: true, size: 7}, value: (_, v) => fmtNum(v)}))],
    }, [xs, ...series.map((s) => s.ys)], container);
    const observer = new ResizeObserver(() => u.setSize({width: width(), height: 240}));
    observer.observe(container);
    charts.push({plot: u, observer, container});
  }

  function evaluationTable(evaluation) {
    const cols = ["probability", "rouge_l", "truth_ratio", "privacy_auc", "forget_quality"];
    const rows = Object.entries(evaluation)
      .filter(([, m]) => m && typeof m === "object" && !Array.isArray(m) && "items" in m)
      .map(([name, m]) => h("tr", {}, h("th", {scope: "row"}, name),
        h("td", {class: "num"}, m.items ?? ""),
        cols.map((c) => h("td", {class: "num"}, fmtNum(m[c])))));
    return [kv([["model utility", fmtNum(evaluation.model_utility)]]),
            table(["set", "items", ...cols], rows, {class: "evaluation numeric"})];
  }

  async function viewModel(name) {
    const [model, versions, jobs] = await Promise.all([
      api("v1/models/" + enc(name)),
      allPages("v1/models/" + enc(name) + "/versions"),
      allPages("v1/jobs?model=" + enc(name)),  // oldest first: the newest are at the end
    ]);
    versions.sort((a, b) => a.version - b.version);
    const aliasesOf = new Map();
    for (const [a, v] of Object.entries(model.aliases || {})) {
      aliasesOf.set(v, [...(aliasesOf.get(v) || []), a]);
    }
    const detail = h("div", {id: "version-detail"});
    const openEvaluation = async (v) => {
      detail.replaceChildren(h("h3", {}, "Evaluation of v" + v.version));
      try {
        append(detail, [evaluationTable(await api("v1/models/" + enc(name) + "/versions/" +
                                                  v.version + "/evaluation"))]);
      } catch (err) {
        detail.append(err.status === 404
          ? h("p", {class: "muted"}, "Not evaluated (a registered or uploaded version).")
          : errorBox(err));
      }
      detail.scrollIntoView({block: "nearest"});
    };
    const base = "v1/models/" + enc(name) + "/versions/";
    const act = (label, cls, fn) => h("button", {type: "button", class: "link " + cls,
                                                 onclick: fn}, label);
    const redraw = () => render();  // the page again, with what the action changed
    const actions = (v) => (v.status !== "ready" ? [] : [
      // A signed link (no key in the URL needed by the browser), valid for minutes.
      act("download", "action-download", async () => {
        try {
          const link = await api(base + v.version + ":archive-link", {method: "POST"});
          // relative, like every call here: works under a path prefix too
          const a = h("a", {href: link.url.replace(/^\//, ""),
                            download: name + "-v" + v.version + ".tar",
                            hidden: true, class: "archive-link"});
          document.body.append(a);
          a.click();
          a.remove();
        } catch (err) { detail.replaceChildren(errorBox(err)); }
      }),
      act("alias…", "action-alias", async () => {
        const alias = prompt("Point which alias at v" + v.version + "?", "production");
        if (!alias) return;
        try {
          await api("v1/models/" + enc(name) + "/aliases/" + enc(alias.trim()), {
            method: "PUT", headers: {"Content-Type": "application/json"},
            body: JSON.stringify({version: v.version})});
          redraw();
        } catch (err) { detail.replaceChildren(errorBox(err)); }
      }),
      act("revoke", "action-revoke danger", async () => {
        if (!confirm("Revoke v" + v.version + " of " + name + "? Its files are deleted " +
                     "for good; the version stays listed, struck through.")) return;
        try {
          await api(base + v.version + ":revoke", {method: "POST"});
          redraw();
        } catch (err) { detail.replaceChildren(errorBox(err)); }
      }),
    ]);
    const aliasTag = (a) => h("span", {class: "tag", "data-alias": a}, a, " ",
      h("button", {type: "button", class: "link action-unalias", title: "delete alias " + a,
                   "aria-label": "delete alias " + a, onclick: async () => {
        if (!confirm("Delete the alias " + a + "?")) return;
        try {
          await api("v1/models/" + enc(name) + "/aliases/" + enc(a), {method: "DELETE"});
          redraw();
        } catch (err) { detail.replaceChildren(errorBox(err)); }
      }}, "×"));
    const rows = versions.slice().reverse().map((v) => h("tr", {
      class: v.status === "revoked" ? "revoked" : null, "data-version": v.version},
      h("td", {class: "num"}, "v" + v.version),
      h("td", {}, badge(v.status), " ", qualityBadge(v.quality)),
      h("td", {class: "num"}, v.parent_version ? "v" + v.parent_version : "root"),
      h("td", {}, v.method || "–"),
      h("td", {}, (v.forget_request_ids || []).map((id) =>
        link("#/requests/" + enc(id), short(id), {class: "mono", title: id}))
        .flatMap((a, i) => (i ? [", ", a] : [a])),
        v.job_id ? [" ", h("span", {class: "muted"}, "job "),
                    link("#/jobs/" + enc(v.job_id), short(v.job_id), {class: "mono"})] : null),
      h("td", {}, (aliasesOf.get(v.version) || []).map(aliasTag)),
      h("td", {class: "num"}, fmtBytes(v.size_bytes)),
      h("td", {}, fmtTime(v.created_at)),
      h("td", {class: "actions"}, act("evaluation", "action-evaluation",
                                      () => openEvaluation(v)), actions(v))));

    const metricSelect = h("select", {id: "forget-metric", "aria-label": "forget metric"},
      ["probability", "rouge_l", "truth_ratio"].map((m) => h("option", {value: m}, m)));
    const forgetBox = h("div", {class: "chart", id: "chart-forget"});
    const utilityBox = h("div", {class: "chart", id: "chart-utility"});
    const jobRows = jobs.slice(-20).reverse().map((j) => h("tr", {},
      h("td", {}, link("#/jobs/" + enc(j.id), short(j.id), {class: "mono"})),
      h("td", {}, badge(j.status), " ", qualityBadge(j.quality)), h("td", {}, j.method),
      h("td", {class: "num"}, "v" + j.base_version + " → " +
        (j.result_version ? "v" + j.result_version : "…")),
      h("td", {}, j.progress ? (j.progress.label || j.progress.stage) : ""),
      h("td", {}, fmtTime(j.created_at))));

    show(
      h("p", {class: "crumbs"}, link("#/models", "Models"), " / ", name),
      h("div", {class: "title-row"}, h("h1", {}, model.name),
        link("#/models/" + enc(name) + "/submit", "Submit a forget request",
             {class: "button", id: "submit-link"})),
      model.description ? h("p", {class: "muted"}, model.description) : null,
      h("section", {class: "grid2"},
        h("div", {class: "card"}, h("div", {class: "title-row"}, h("h2", {}, "Forgetting"),
          metricSelect), h("p", {class: "muted small"}, "Each forget request's set, on its " +
          "base version, the version it produced, and every later one (lower is better)."),
          forgetBox),
        h("div", {class: "card"}, h("h2", {}, "Model utility"), h("p", {class: "muted small"},
          "Retain and general-knowledge sets (higher is better)."), utilityBox)),
      h("section", {class: "card"}, h("h2", {}, "Lineage"),
        table(["Version", "Status", "Parent", "Method", "Made by (requests, job)", "Aliases",
               "Size", "Created", ""], rows, {id: "lineage"}), detail),
      h("section", {class: "card"}, h("h2", {}, "Recent jobs"), jobRows.length
        ? table(["Job", "Status", "Method", "Versions", "Stage", "Created"], jobRows,
                {id: "jobs"})
        : h("p", {class: "muted"}, "No jobs yet.")));
    const drawForget = () => chart(forgetBox, forgetSeries(versions, metricSelect.value),
                                   metricSelect.value);
    metricSelect.addEventListener("change", () => {
      dropCharts((c) => c.container !== forgetBox);
      drawForget();
    });
    drawForget();
    chart(utilityBox, utilitySeries(versions), "score");
  }

  // Items as JSON (an array, {"items": [...]}, or one item) or JSON Lines.
  function parseItems(text) {
    const t = text.trim();
    if (!t) throw new Error("no items: paste JSON or choose a file");
    try {
      const v = JSON.parse(t);
      if (Array.isArray(v)) return v;
      if (v && Array.isArray(v.items)) return v.items;
      if (v && typeof v === "object") return [v];
    } catch (_) { /* not one JSON document: JSON Lines */ }
    return t.split(/\r?\n/).map((line, i) => [line.trim(), i + 1]).filter(([l]) => l)
      .map(([line, n]) => {
        try { return JSON.parse(line); } catch (e) {
          throw new Error("line " + n + " is not JSON: " + e.message);
        }
      });
  }

  async function viewSubmit(name) {
    const model = await api("v1/models/" + enc(name));
    const items = h("textarea", {id: "items", name: "items", rows: 10, spellcheck: false,
      placeholder: '[{"question": "Where was X born?", "answer": "In Y."}]\n' +
                   "or JSON Lines: one item per line"});
    const file = h("input", {type: "file", id: "items-file", accept: ".jsonl,.json,.txt,application/json"});
    file.addEventListener("change", async () => {
      if (file.files.length) items.value = await file.files[0].text();
    });
    const method = h("select", {id: "method", name: "method"},
      METHODS.map((m) => h("option", {value: m}, m)));
    const params = h("textarea", {id: "params", name: "params", rows: 3, spellcheck: false,
      placeholder: '{"epochs": 2}  (optional; the model\'s defaults apply otherwise)'});
    const base = h("input", {type: "number", id: "base-version", min: 1, inputmode: "numeric",
      placeholder: "newest ready version"});
    const status = h("div", {});
    const button = h("button", {type: "submit"}, "Submit");
    const idemKey = randomKey();  // one per form: a double click makes one request
    const form = h("form", {class: "card", id: "submit-form", onsubmit: async (e) => {
      e.preventDefault();
      status.replaceChildren();
      let body;
      try {
        body = {items: parseItems(items.value), method: method.value};
        if (params.value.trim()) body.params = JSON.parse(params.value);
        if (base.value) body.base_version = Number(base.value);
      } catch (err) {
        status.append(errorBox(err));
        return;
      }
      button.disabled = true;
      try {
        const req = await api("v1/models/" + enc(name) + "/forget-requests", {
          method: "POST", body: JSON.stringify(body),
          headers: {"Content-Type": "application/json", "Idempotency-Key": idemKey}});
        followRequest = req.id;
        location.hash = "#/requests/" + enc(req.id);
      } catch (err) {
        status.append(errorBox(err));
        button.disabled = false;
      }
    }},
    h("label", {for: "items"}, "Items to forget"), items,
    h("label", {for: "items-file"}, "…or a JSON / JSON Lines file"), file,
    h("div", {class: "row"},
      h("div", {}, h("label", {for: "method"}, "Method"), method),
      h("div", {}, h("label", {for: "base-version"}, "Base version"), base)),
    h("label", {for: "params"}, "Parameters (JSON object)"), params,
    button, status);
    show(h("p", {class: "crumbs"}, link("#/models", "Models"), " / ",
             link("#/models/" + enc(name), model.name), " / submit"),
         h("h1", {}, "Forget request for " + model.name), form);
  }

  function progressBlock(p, status) {
    if (!p) return null;
    const frac = Math.max(0, Math.min(1, Number(p.fraction) || 0));
    const steps = p.total_steps ? p.step + " / " + p.total_steps : "";
    // "evaluating (before)" / "(after)": the label says which evaluation runs.
    const eta = (status === "running" && p.eta_seconds != null)
      ? "about " + fmtSeconds(p.eta_seconds) + " left" : "";
    return h("div", {class: "progress-block"},
      h("div", {class: "progress-label"}, h("span", {id: "stage"}, p.label || p.stage || status),
        h("span", {id: "steps", class: "muted"}, steps),
        h("span", {class: "muted"}, Math.round(frac * 100) + "%"),
        h("span", {id: "eta", class: "muted"}, eta)),
      h("div", {class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
                "aria-valuenow": Math.round(frac * 100)},
        h("div", {class: "fill s-" + status, style: "width:" + (frac * 100).toFixed(1) + "%"})));
  }

  function metricsSummary(m) {
    if (!m || !m.before || !m.after) return null;
    const row = (label, f) => h("tr", {}, h("th", {scope: "row"}, label),
      h("td", {class: "num"}, fmtNum(f(m.before))), h("td", {class: "num"}, fmtNum(f(m.after))));
    return table(["", "before", "after"], [
      row("forget probability", (x) => metricOf(x.forget, "probability")),
      row("forget ROUGE-L", (x) => metricOf(x.forget, "rouge_l")),
      row("retain probability", (x) => metricOf(x.retain, "probability")),
      row("model utility", (x) => x.model_utility),
    ], {class: "metrics numeric"});
  }

  function qualityCard(q) {
    if (!q) return null;
    const pct = (x) => (typeof x === "number" && isFinite(x) ? (x * 100).toFixed(1) + "%" : "–");
    const ref = q.reference || {};
    const measured = {this_job_before: "measured by this job, before it ran",
                      job_before: "measured by job " + short(ref.job_id),
                      version_evaluation: "its stored evaluation"}[ref.source] || ref.source;
    return h("section", {class: "card" + (q.passed === false ? " quality-failed" : ""),
                         id: "quality"},
      h("h2", {}, "Quality ", q.passed === false ? qualityBadge(q)
        : h("span", {class: "badge s-succeeded", "data-quality": "passed"}, "passed")),
      h("p", {}, q.message || ""),
      kv([["utility floor", pct(q.floor)],
          ["retain probability kept", pct(q.retain_probability_ratio)],
          ["model utility kept", pct(q.model_utility_ratio)],
          ["forgetting target met", q.target_met === null || q.target_met === undefined
            ? "no target" : (q.target_met ? "yes" : "no")],
          ["against", ref.version ? "v" + ref.version + " (" + measured + ")" : null]]));
  }

  // The request's items while the service keeps them (410 once purged: their hashes stay).
  async function itemsCard(id) {
    let body;
    try {
      const {items} = await api("v1/forget-requests/" + enc(id) + "/items");
      body = table(["#", "question / text", "answer"], items.map((it, i) => h("tr", {},
        h("td", {class: "num"}, i + 1), h("td", {}, it.question ?? it.text ?? ""),
        h("td", {}, it.answer ?? ""))), {id: "items"});
    } catch (err) {
      body = err.status === 410 ? h("p", {class: "muted", id: "items-purged"}, err.message)
                                : errorBox(err);
    }
    return h("section", {class: "card"}, h("h2", {}, "Items"), body);
  }

  async function viewRequest(id) {
    const items = await itemsCard(id);  // once: they never change
    await live(async () => {
      const r = await api("v1/forget-requests/" + enc(id));
      if (followRequest === id && r.job_id) {
        followRequest = null;
        location.replace("#/jobs/" + enc(r.job_id));
        return false;
      }
      show(h("p", {class: "crumbs"}, link("#/models/" + enc(r.model), r.model), " / request"),
        h("h1", {}, "Forget request ", h("span", {class: "mono"}, short(r.id)), " ",
          badge(r.status)),
        progressBlock(r.progress, r.status),
        h("div", {class: "card"}, kv([
          ["id", h("span", {class: "mono"}, r.id)],
          ["model", link("#/models/" + enc(r.model), r.model)],
          ["method", r.method], ["items", r.item_count],
          ["base version", r.base_version ? "v" + r.base_version : "newest"],
          ["result version", r.result_version ? "v" + r.result_version : null],
          ["job", r.job_id ? link("#/jobs/" + enc(r.job_id), r.job_id, {class: "mono"}) : "not yet"],
          ["created", fmtTime(r.created_at)], ["finished", fmtTime(r.finished_at)],
        ])),
        FINISHED.includes(r.status) || r.cancel_requested ? null
          : h("button", {type: "button", class: "danger", id: "cancel-request", onclick: async () => {
            if (!confirm("Cancel this forget request? A running job stops at its next step.")) {
              return;
            }
            try {
              await api("v1/forget-requests/" + enc(id) + ":cancel", {method: "POST"});
            } catch (err) { main.prepend(errorBox(err)); }
          }}, "Cancel request"),
        r.error ? errorBox(new Error(r.error.type + ": " + r.error.message)) : null,
        metricsSummary(r.metrics), items);
      return !FINISHED.includes(r.status);
    });
  }

  async function viewJob(id) {
    await live(async () => {
      const [j, events] = await Promise.all([
        api("v1/jobs/" + enc(id)), api("v1/jobs/" + enc(id) + "/events?limit=500")]);
      const done = FINISHED.includes(j.status);
      const eventRows = events.items.slice().reverse().map((e) => h("tr", {},
        h("td", {}, fmtTime(e.at)), h("td", {}, e.stage), h("td", {}, e.message)));
      const timings = Object.entries(j.timings || {}).map(([k, v]) =>
        h("tr", {}, h("th", {scope: "row"}, k), h("td", {class: "num"}, fmtNum(v, 2) + " s")));
      show(h("p", {class: "crumbs"}, link("#/models/" + enc(j.model), j.model), " / job"),
        h("h1", {}, "Job ", h("span", {class: "mono"}, short(j.id)), " ",
          h("span", {id: "job-status"}, badge(j.status)), " ", qualityBadge(j.quality)),
        done ? null : h("p", {class: "muted small"}, "Updating live…"),
        progressBlock(j.progress, j.status),
        h("div", {class: "card"}, kv([
          ["id", h("span", {class: "mono"}, j.id)],
          ["model", link("#/models/" + enc(j.model), j.model)],
          ["method", j.method],
          ["versions", ["v" + j.base_version, " → ", j.result_version
            ? link("#/models/" + enc(j.model), "v" + j.result_version, {id: "result-version"})
            : "…"]],
          ["requests", (j.forget_request_ids || []).map((r) =>
            link("#/requests/" + enc(r), short(r), {class: "mono", title: r}))
            .flatMap((a, i) => (i ? [", ", a] : [a]))],
          ["attempts", j.attempts],
          ["started", fmtTime(j.started_at)], ["finished", fmtTime(j.finished_at)],
        ])),
        j.error ? errorBox(new Error(j.error.type + ": " + j.error.message)) : null,
        qualityCard(j.quality),
        done && j.metrics ? h("section", {class: "card"}, h("h2", {}, "Metrics"),
                              metricsSummary(j.metrics)) : null,
        h("section", {class: "card"}, h("h2", {}, "Events"),
          table(["At", "Stage", "Message"], eventRows, {id: "events"})),
        timings.length ? h("section", {class: "card"}, h("h2", {}, "Timings"),
                           table(["stage", "seconds"], timings, {class: "numeric"})) : null);
      return !done;
    });
  }

  // ---------------------------------------------------------------- routing

  const ROUTES = [
    [/^#\/login$/, viewLogin],
    [/^#\/models$/, viewModels],
    [/^#\/models\/([^/]+)$/, viewModel],
    [/^#\/models\/([^/]+)\/submit$/, viewSubmit],
    [/^#\/requests\/([^/]+)$/, viewRequest],
    [/^#\/jobs\/([^/]+)$/, viewJob],
  ];

  async function render() {
    liveToken++;
    const hash = location.hash || "#/models";
    const signedIn = Boolean(getKey());
    document.getElementById("nav").hidden = !signedIn;
    if (!signedIn && hash !== "#/login") {
      location.replace("#/login");
      return;
    }
    for (const [re, view] of ROUTES) {
      const m = hash.match(re);
      if (!m) continue;
      show(h("p", {class: "muted"}, "Loading…"));
      try {
        await view(...m.slice(1).map(decodeURIComponent));
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 401)) show(errorBox(err));
      }
      return;
    }
    show(h("p", {}, "Nothing here. ", link("#/models", "Models")));
  }

  document.getElementById("signout").addEventListener("click", () => {
    clearKey();
    location.hash = "#/login";
  });
  window.addEventListener("hashchange", render);
  render();
})();
