// The dashboard: the job list, one job's page, the start form. Plain JavaScript on the node's
// own REST API (/v1/download) and /ui/api/jobs/{id}; it polls once a second and changes only
// the parts of the page whose data changed.
"use strict";

const POLL_MS = 1000;
const EPOCH = "1970-01-01T00:00:00Z";
const ERRORS_PER_PAGE = 50;
const CHART_SAMPLES = 120; // two minutes at one sample a second
const TOKEN_KEY = "aisdl.token";
const MAX_ERRORS_KEPT = 200000; // the page's memory bound; the CLI lists them all

const $ = (id) => document.getElementById(id);

// -- talking to the node ---------------------------------------------------------------------
class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json"; // the node takes JSON only as JSON
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error(`the node did not answer (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (response.status === 401) throw new Unauthorized((data && data.message) || "unauthorized");
  if (!response.ok) {
    throw new Error((data && data.message) || `${method} ${path}: ${response.status}`);
  }
  return data;
}

// -- formatting --------------------------------------------------------------------------------
function iec(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = Number(n) || 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? String(Math.round(v)) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
}

function perSecond(n) { return n >= 100 ? Math.round(n).toString() : n.toFixed(1); }

function when(text) {
  if (!text || text === EPOCH) return "—";
  const d = new Date(text);
  return isNaN(d) ? text : d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

function isFinished(job) { return Boolean(job.finished_time) && job.finished_time !== EPOCH; }
function doneCount(job) { return Number(job.finished_cnt) + Number(job.error_cnt); }
function totalOf(job) {
  return Number(job.total) > 0 ? Number(job.total) : Number(job.scheduled_cnt);
}

function statusOf(job) {
  if (job.aborted) return isFinished(job) ? ["Aborted", "aborted"] : ["Stopping", "aborted"];
  if (isFinished(job)) {
    return job.error_cnt > 0 ? ["Finished with errors", "errors"] : ["Finished", "finished"];
  }
  return [job.waiting ? "Waiting " + job.waiting : "Running", "running"];
}

function progressText(job) {
  const total = totalOf(job);
  if (total <= 0) return `${doneCount(job)}/?`;
  return `${doneCount(job)}/${total} (${(100 * doneCount(job) / total).toFixed(1)}%)`;
}

function setText(el, text) { if (el.textContent !== text) el.textContent = text; }

function cell(tr, label) {
  const td = document.createElement("td");
  td.dataset.label = label;
  tr.appendChild(td);
  return td;
}

// -- messages --------------------------------------------------------------------------------
function showAlert(message) {
  const el = $("alert");
  setText(el, message || "");
  el.hidden = !message;
}

function setLive(text) { setText($("live"), text); }

// -- a rate from two looks at a growing count -------------------------------------------------
class Rate {
  constructor() { this.last = null; this.value = 0; }
  update(count, at) {
    if (this.last !== null && at > this.last.at) {
      const now = Math.max(0, count - this.last.count) / ((at - this.last.at) / 1000);
      this.value = this.value ? 0.5 * this.value + 0.5 * now : now; // a little smoothing
    }
    this.last = { count, at };
    return this.value;
  }
}

// -- the job list ------------------------------------------------------------------------------
class JobList {
  constructor() {
    this.rows = new Map(); // job id → {tr, cells, rate}
    this.tbody = $("jobs").tBodies[0];
  }

  async poll() {
    const jobs = await api("GET", "/v1/download");
    this.render(Array.isArray(jobs) ? jobs : [], performance.now());
  }

  render(jobs, at) {
    jobs.sort((a, b) => (a.started_time < b.started_time ? 1 : -1)); // newest first
    const seen = new Set();
    let previous = null;
    for (const job of jobs) {
      seen.add(job.id);
      let row = this.rows.get(job.id);
      if (!row) { row = this.newRow(job); this.rows.set(job.id, row); }
      this.update(row, job, at);
      // keep the order without moving rows that are already in place
      const wanted = previous ? previous.nextSibling : this.tbody.firstChild;
      if (wanted !== row.tr) this.tbody.insertBefore(row.tr, wanted);
      previous = row.tr;
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) { row.tr.remove(); this.rows.delete(id); }
    }
    $("no-jobs").hidden = jobs.length > 0;
  }

  newRow(job) {
    const tr = document.createElement("tr");
    tr.dataset.job = job.id;
    const link = document.createElement("a");
    link.href = "#/jobs/" + encodeURIComponent(job.id);
    link.textContent = job.id;
    cell(tr, "Job").appendChild(link);
    const status = cell(tr, "Status");
    const progressCell = cell(tr, "Progress");
    const bar = document.createElement("progress");
    const progress = document.createElement("span");
    progressCell.append(bar, progress);
    const rate = cell(tr, "Rate");
    rate.classList.add("num");
    const errors = cell(tr, "Errors");
    errors.classList.add("num");
    const description = cell(tr, "Description");
    return { tr, status, bar, progress, rate, errors, description, rate_: new Rate() };
  }

  update(row, job, at) {
    const [word, kind] = statusOf(job);
    setText(row.status, word);
    row.status.className = "status-" + kind;
    const total = totalOf(job);
    row.bar.max = Math.max(1, total);
    row.bar.value = Math.min(doneCount(job), row.bar.max);
    row.bar.setAttribute("aria-label", `Progress of ${job.id}`);
    setText(row.progress, progressText(job));
    const rate = row.rate_.update(doneCount(job), at);
    setText(row.rate, isFinished(job) ? "—" : perSecond(rate) + " files/s");
    setText(row.errors, String(job.error_cnt));
    setText(row.description, job.description || "");
  }
}

// -- one job's page ------------------------------------------------------------------------------
class JobPage {
  constructor(id) {
    this.id = id;
    this.errorsAfter = 0;
    this.tasksAfter = 0;
    this.errors = [];       // [name, message], in the order they were recorded
    this.matches = null;    // indices into errors that match the filter; null: no filter
    this.filter = "";
    this.page = 0;
    this.shownKey = "";     // what the error table shows now: re-rendered only when it changes
    this.inflight = new Map(); // name → {tr, cells, last: {bytes, at}, rate}
    this.seenBytes = null;  // bytes done and in flight, as last seen (never goes down)
    this.finishedBytes = 0;
    this.filesRate = new Rate();
    this.bytesRate = 0;
    this.samples = [];      // [{bytes, files}] per poll
    this.job = null;
    this.truncated = false;
  }

  async poll() {
    const query = `errors_after=${this.errorsAfter}&tasks_after=${this.tasksAfter}`;
    const view = await api("GET", `/ui/api/jobs/${encodeURIComponent(this.id)}?${query}`);
    const at = performance.now();
    this.job = view.job;
    this.addErrors(view.errors);
    this.errorsAfter = view.errors_after;
    this.measure(view, at);
    this.renderFacts();
    this.renderInflight(view.job.current_tasks || [], at);
    this.renderErrors();
    drawChart($("chart"), this.samples);
  }

  measure(view, at) {
    const first = this.seenBytes === null;
    if (!first) this.finishedBytes += view.finished.bytes;
    this.tasksAfter = view.finished.tasks_after;
    const inflight = (view.job.current_tasks || []).reduce((s, t) => s + Number(t.downloaded), 0);
    // Finished tasks reach the database up to a second after they leave the in-flight list:
    // the running total holds still meanwhile rather than dipping.
    const done = view.recorded_bytes ?? this.finishedBytes;  // null: the node has no count
    const seen = Math.max(this.seenBytes || 0, done + inflight);
    if (!first && this.lastAt !== undefined && at > this.lastAt) {
      this.bytesRate = (seen - this.seenBytes) / ((at - this.lastAt) / 1000);
    }
    this.seenBytes = seen;
    this.lastAt = at;
    const files = this.filesRate.update(doneCount(view.job), at);
    if (!first && !isFinished(view.job)) {
      this.samples.push({ bytes: this.bytesRate, files });
      if (this.samples.length > CHART_SAMPLES) this.samples.shift();
    }
  }

  renderFacts() {
    const job = this.job;
    setText($("job-id"), job.id);
    setText($("job-desc"), job.description || "");
    const [word, kind] = statusOf(job);
    const status = $("job-status");
    setText(status, word);
    status.className = "status-" + kind;
    const total = totalOf(job);
    const bar = $("job-progress");
    bar.max = Math.max(1, total);
    bar.value = Math.min(doneCount(job), bar.max);
    setText($("job-done"), progressText(job));
    setText($("job-skipped"), String(job.skipped_cnt));
    setText($("job-errors"), String(job.error_cnt));
    const running = !isFinished(job);
    setText($("job-files-rate"), running ? perSecond(this.filesRate.value) : "—");
    setText($("job-bytes-rate"), running ? iec(this.bytesRate) + "/s" : "—");
    setText($("job-started"), when(job.started_time));
    setText($("job-finished"), when(job.finished_time));
    $("stop").disabled = !running || job.aborted;
    $("remove").disabled = running;
    $("chart").setAttribute("aria-label", running
      ? `Throughput over the last two minutes; now ${iec(this.bytesRate)}/s,`
        + ` ${perSecond(this.filesRate.value)} files/s`
      : "Throughput over the last two minutes; the job has ended");
  }

  renderInflight(tasks, at) {
    const tbody = $("inflight").tBodies[0];
    const seen = new Set();
    let previous = null;
    for (const t of tasks) { // sorted by name by the node
      seen.add(t.name);
      let row = this.inflight.get(t.name);
      if (!row) {
        const tr = document.createElement("tr");
        const name = cell(tr, "Name");
        name.textContent = t.name;
        const bytes = cell(tr, "Downloaded");
        const size = cell(tr, "Size");
        const rate = cell(tr, "Rate");
        for (const c of [bytes, size, rate]) c.classList.add("num");
        row = { tr, bytes, size, rate, last: null, value: 0 };
        this.inflight.set(t.name, row);
      }
      const done = Number(t.downloaded);
      if (row.last && at > row.last.at) {
        const now = Math.max(0, done - row.last.bytes) / ((at - row.last.at) / 1000);
        row.value = row.value ? 0.5 * row.value + 0.5 * now : now;
      }
      row.last = { bytes: done, at };
      setText(row.bytes, iec(done));
      setText(row.size, Number(t.total) > 0 ? iec(t.total) : "?");
      setText(row.rate, iec(row.value) + "/s");
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (wanted !== row.tr) tbody.insertBefore(row.tr, wanted);
      previous = row.tr;
    }
    for (const [name, row] of this.inflight) {
      if (!seen.has(name)) { row.tr.remove(); this.inflight.delete(name); }
    }
    setText($("inflight-count"), String(tasks.length));
  }

  // -- errors: kept here, filtered here, shown a page at a time --------------------------
  addErrors(rows) {
    if (!rows.length) return;
    const room = MAX_ERRORS_KEPT - this.errors.length;
    if (rows.length > room) { rows = rows.slice(0, Math.max(0, room)); this.truncated = true; }
    const start = this.errors.length;
    for (const r of rows) this.errors.push(r);
    if (this.matches !== null) {
      for (let i = start; i < this.errors.length; i++) {
        if (this.matchesFilter(this.errors[i])) this.matches.push(i);
      }
    }
  }

  matchesFilter([name, message]) {
    return name.toLowerCase().includes(this.filter) || message.toLowerCase().includes(this.filter);
  }

  setFilter(text) {
    const filter = text.trim().toLowerCase();
    if (filter === this.filter) return;
    this.filter = filter;
    this.page = 0;
    if (!filter) { this.matches = null; } else {
      this.matches = [];
      for (let i = 0; i < this.errors.length; i++) {
        if (this.matchesFilter(this.errors[i])) this.matches.push(i);
      }
    }
    this.renderErrors();
  }

  turnPage(step) { this.page += step; this.renderErrors(); }

  renderErrors() {
    const count = this.matches === null ? this.errors.length : this.matches.length;
    const pages = Math.max(1, Math.ceil(count / ERRORS_PER_PAGE));
    this.page = Math.min(Math.max(0, this.page), pages - 1);
    const from = this.page * ERRORS_PER_PAGE;
    const to = Math.min(count, from + ERRORS_PER_PAGE);
    const total = this.job ? Number(this.job.error_cnt) : this.errors.length;
    setText($("error-count"), this.matches === null ? String(total)
      : `${count} of ${this.errors.length} match`);
    setText($("errors-page"), count ? `Errors ${from + 1}–${to} of ${count}`
      + (this.truncated ? " (the first " + MAX_ERRORS_KEPT + " kept)" : "") : "");
    $("errors-prev").disabled = this.page === 0;
    $("errors-next").disabled = this.page >= pages - 1;
    const empty = $("errors-empty");
    empty.hidden = count > 0;
    setText(empty, this.matches === null ? "No errors." : "No errors match the filter.");
    const key = `${this.filter}\u0000${from}\u0000${to}`;
    if (key === this.shownKey) return; // rows only ever add at the end: this page is as shown
    this.shownKey = key;
    const tbody = $("errors").tBodies[0];
    const rows = document.createDocumentFragment();
    for (let k = from; k < to; k++) {
      const [name, message] = this.errors[this.matches === null ? k : this.matches[k]];
      const tr = document.createElement("tr");
      cell(tr, "Name").textContent = name;
      cell(tr, "Error").textContent = message;
      rows.appendChild(tr);
    }
    tbody.replaceChildren(rows);
  }
}

// -- the chart: bytes/s as an area, files/s as a line, each on its own scale -----------------------
function drawChart(canvas, samples) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const pad = 6 * ratio;
  const x = (i) => pad + (width - 2 * pad) * (i + CHART_SAMPLES - samples.length)
    / (CHART_SAMPLES - 1);
  const series = (key) => {
    const top = Math.max(...samples.map((s) => s[key]), 1e-9);
    return { top, y: (v) => height - pad - (height - 2 * pad - 14 * ratio) * v / top };
  };
  g.font = `${12 * ratio}px system-ui, sans-serif`;
  if (samples.length < 2) {
    g.fillStyle = style.getPropertyValue("--muted");
    g.fillText("The chart fills in while the job runs.", pad * 2, height / 2);
    return;
  }
  const bytes = series("bytes");
  g.beginPath();
  g.moveTo(x(0), height - pad);
  samples.forEach((s, i) => g.lineTo(x(i), bytes.y(s.bytes)));
  g.lineTo(x(samples.length - 1), height - pad);
  g.closePath();
  g.globalAlpha = 0.35;
  g.fillStyle = style.getPropertyValue("--bytes");
  g.fill();
  g.globalAlpha = 1;
  const files = series("files");
  g.beginPath();
  samples.forEach((s, i) => (i ? g.lineTo : g.moveTo).call(g, x(i), files.y(s.files)));
  g.strokeStyle = style.getPropertyValue("--files");
  g.lineWidth = 2 * ratio;
  g.stroke();
  g.fillStyle = style.getPropertyValue("--fg");
  g.fillText(`max ${iec(bytes.top)}/s`, pad * 2, pad + 12 * ratio);
  const label = `max ${perSecond(files.top)} files/s`;
  g.fillText(label, width - pad * 2 - g.measureText(label).width, pad + 12 * ratio);
}

// -- the app: views, the poll loop, the token ---------------------------------------------------
const app = {
  view: null,      // the JobList or JobPage on screen
  timer: null,
  generation: 0,   // a poll of a view that was left must not draw on the next one
  jobList: null,
  pollFailed: false, // the alert shows why the last poll failed: cleared by the next success
};

function show(section) {
  for (const id of ["login-view", "list-view", "job-view"]) $(id).hidden = id !== section;
}

function route() {
  const match = /^#\/jobs\/(.+)$/.exec(location.hash);
  showAlert("");
  if (match) {
    app.view = new JobPage(decodeURIComponent(match[1]));
    $("error-filter").value = "";
    for (const id of ["inflight", "errors"]) $(id).tBodies[0].replaceChildren();
    show("job-view");
  } else {
    app.jobList = app.jobList || new JobList();
    app.view = app.jobList;
    show("list-view");
  }
  $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
  restartPolling();
}

function restartPolling() {
  clearTimeout(app.timer);
  app.generation++;
  tick(app.generation);
}

async function tick(generation) {
  const started = performance.now();
  const view = app.view;
  try {
    await view.poll();
    if (generation !== app.generation) return;
    setLive("Updated " + new Date().toLocaleTimeString());
    if (app.pollFailed) { app.pollFailed = false; showAlert(""); }
  } catch (err) {
    if (generation !== app.generation) return;
    if (err instanceof Unauthorized) { askForToken(err.message); return; }
    setLive("Not updated");
    showAlert(err.message); // e.g. a token without access to this, or the node gone
    app.pollFailed = true;
    if (view instanceof JobPage && /does not exist/.test(err.message)) return; // removed
  }
  const wait = Math.max(0, POLL_MS - (performance.now() - started));
  app.timer = setTimeout(() => tick(generation), wait);
}

function askForToken(message) {
  clearTimeout(app.timer);
  app.generation++;
  const hadToken = Boolean(sessionStorage.getItem(TOKEN_KEY));
  showAlert(hadToken ? "The node refused the token: " + message : "");
  show("login-view");
  $("token").focus();
}

function parseDest(text) {
  const m = /^(?:(ais|s3|aws|gs|gcp|az|azure):\/\/)?([^/]+)(?:\/(.*))?$/.exec(text.trim());
  if (!m) throw new Error(`destination ${JSON.stringify(text)} is not BUCKET or ais://BUCKET/PATH`);
  const providers = { ais: "ais", s3: "aws", aws: "aws", gs: "gcp", gcp: "gcp", az: "azure",
    azure: "azure" };
  return { bucket: { name: m[2], provider: providers[m[1] || "ais"] }, path: m[3] || "" };
}

// What `ais start download SOURCE DEST` sends for a link or a range template.
function startRequest(source, destText, description, conns) {
  const dest = parseDest(destText);
  const body = { bucket: dest.bucket, description, limits: { connections: conns } };
  if (source.includes("{") || source.includes("}")) {
    return { ...body, type: "range", template: source, subdir: dest.path };
  }
  let name = dest.path;
  if (!name || name.endsWith("/")) {
    const base = source.split("?")[0].replace(/\/+$/, "").split("/").pop();
    name = name + base;
  }
  return { ...body, type: "single", link: source, object_name: name };
}

function wire() {
  window.addEventListener("hashchange", route);
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    route();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    route();
  });
  $("start-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = $("start");
    button.disabled = true;
    try {
      const body = startRequest($("source").value.trim(), $("dest").value,
        $("description").value.trim(), Number($("conns").value) || 0);
      const { id } = await api("POST", "/v1/download", body);
      showAlert("");
      $("start-form").reset(); // a second press must not start the same job again
      location.hash = "#/jobs/" + encodeURIComponent(id);
    } catch (err) {
      if (err instanceof Unauthorized) askForToken(err.message);
      else showAlert("The download did not start: " + err.message);
    } finally {
      button.disabled = false;
    }
  });
  const act = (action) => async () => {
    const page = app.view;
    if (!(page instanceof JobPage)) return;
    try {
      await api("DELETE", "/v1/download/" + action, { id: page.id });
      if (action === "remove") { location.hash = "#/"; return; }
      restartPolling();
    } catch (err) {
      if (err instanceof Unauthorized) askForToken(err.message);
      else showAlert(`${action === "abort" ? "Stop" : "Remove"} failed: ${err.message}`);
    }
  };
  $("stop").addEventListener("click", act("abort"));
  $("remove").addEventListener("click", act("remove"));
  let pending = null;
  $("error-filter").addEventListener("input", (e) => {
    clearTimeout(pending);
    pending = setTimeout(() => {
      if (app.view instanceof JobPage) app.view.setFilter(e.target.value);
    }, 120);
  });
  $("errors-prev").addEventListener("click", () => app.view.turnPage(-1));
  $("errors-next").addEventListener("click", () => app.view.turnPage(1));
  window.addEventListener("resize", () => {
    if (app.view instanceof JobPage) drawChart($("chart"), app.view.samples);
  });
  route();
}

document.addEventListener("DOMContentLoaded", wire);
