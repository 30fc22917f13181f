// The gateway's web console: plain DOM code, no framework, no build step.
// The API key lives in sessionStorage only (gone when the tab closes) and travels in X-API-Key.
// Every failed call shows the API's own JSON message: {"error": ..., "request_id": ...}.
"use strict";

const KEY_ITEM = "car-detection-api-key";
const $ = (id) => document.getElementById(id);

function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

function showKeyState() {
  const key = apiKey();
  $("key-state").textContent = key ? `key set (…${key.slice(-4)}), kept for this tab only` : "no key (kept for this browser tab only)";
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function showError(status, body) {
  const box = $("error");
  const message = body && typeof body.error === "string" ? body.error : "the server answered without a JSON error";
  box.textContent = `${status}: ${message}` + (body && body.request_id ? ` (request id ${body.request_id})` : "");
  box.dataset.status = String(status);
  box.hidden = false;
}

class ApiFailure extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

// One call to the gateway; resolves to the Response when it is 2xx, else throws ApiFailure
// carrying the API's JSON error body.
async function call(method, path, body) {
  const headers = {};
  if (apiKey()) headers["X-API-Key"] = apiKey();
  if (typeof body === "string") headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body, credentials: "omit", cache: "no-store" });
  } catch (network) {
    throw new ApiFailure(0, { error: `the gateway could not be reached (${network.message})` });
  }
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch (_) {
      parsed = null;
    }
    throw new ApiFailure(response.status, parsed);
  }
  return response;
}

async function guarded(action) {
  clearError();
  try {
    await action();
  } catch (failure) {
    if (failure instanceof ApiFailure) showError(failure.status, failure.body);
    else showError("console", { error: String(failure) });
  }
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  row.appendChild(td);
  return td;
}

function fillTable(table, rows, columns) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const tr = document.createElement("tr");
    for (const column of columns) cell(tr, column(item));
    body.appendChild(tr);
  }
}

function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ------------------------------------------------------------------ detection

let lastDetection = null;

function drawBoxes() {
  const frame = $("frame");
  const layer = $("boxes");
  layer.replaceChildren();
  if (!lastDetection || !frame.naturalWidth) return;
  // Boxes are in pixels of the original image; the picture is shown scaled to the page.
  const scale = frame.clientWidth / frame.naturalWidth;
  lastDetection.detections.forEach((d, index) => {
    const box = document.createElement("div");
    box.className = "box";
    box.dataset.index = String(index);
    box.style.left = `${d.bbox.x_min * scale}px`;
    box.style.top = `${d.bbox.y_min * scale}px`;
    box.style.width = `${(d.bbox.x_max - d.bbox.x_min) * scale}px`;
    box.style.height = `${(d.bbox.y_max - d.bbox.y_min) * scale}px`;
    const label = document.createElement("span");
    label.className = "box-label";
    label.textContent = `${d.class_name} ${d.confidence.toFixed(2)}`;
    box.appendChild(label);
    layer.appendChild(box);
  });
}

async function detect(file) {
  if (!file) return;
  const form = new FormData();
  form.append("image", file, file.name || "image");
  form.append("user_id", $("user-id").value.trim());
  const started = performance.now();
  const response = await call("POST", "/api/detect", form);
  const result = await response.json();
  const roundTrip = performance.now() - started;
  lastDetection = result;
  const frame = $("frame");
  if (frame.src) URL.revokeObjectURL(frame.src);
  frame.onload = drawBoxes;
  frame.src = URL.createObjectURL(file);
  $("r-request-id").textContent = result.request_id;
  $("r-model").textContent = `${result.model_name} version ${result.model_version}`;
  $("r-count").textContent = String(result.detections.length);
  $("r-inference").textContent = `${result.inference_time_ms.toFixed(1)} ms`;
  $("r-roundtrip").textContent = `${roundTrip.toFixed(1)} ms`;
  $("r-image").textContent = result.image ? `${result.image.width} x ${result.image.height} px` : "";
  fillTable($("detections-table"), result.detections.map((d, i) => ({ ...d, i })), [
    (d) => d.i + 1, (d) => d.class_name, (d) => d.confidence.toFixed(3),
    (d) => d.bbox.x_min.toFixed(1), (d) => d.bbox.y_min.toFixed(1), (d) => d.bbox.x_max.toFixed(1), (d) => d.bbox.y_max.toFixed(1),
  ]);
  $("detect-result").hidden = false;
  $("detect-result").dataset.requestId = result.request_id;
}

// ------------------------------------------------------------------ data subject rights

// The subject's id travels in a JSON body (POST /api/results/subjects/...), never in a URL.
function subjectBody(extra) {
  const id = $("subject-id").value.trim();
  if (!id) throw new ApiFailure("console", { error: "enter the user id of the data subject first" });
  return JSON.stringify({ user_id: id, ...extra });
}

async function lookUp() {
  const response = await call("POST", "/api/results/subjects/access", subjectBody({}));
  const data = await response.json();
  $("subject-summary").textContent =
    `${data.count} prediction(s), ${data.feedback.length} feedback item(s), ${data.access_log.length} journal entr${data.access_log.length === 1 ? "y" : "ies"}; ` +
    `pseudonym ${data.user_hash.slice(0, 16)}…; exported ${data.exported_at}`;
  fillTable($("subject-predictions"), data.predictions, [
    (p) => p.request_id, (p) => p.created_at, (p) => p.detection_count, (p) => p.model_version, (p) => p.client_id,
  ]);
  fillTable($("subject-journal"), data.access_log, [
    (e) => e.at, (e) => e.action, (e) => e.actor_role, (e) => e.actor_id, (e) => e.record_count,
  ]);
  $("subject-result").hidden = false;
  $("subject-result").dataset.count = String(data.count);
}

async function exportSubject() {
  const response = await call("POST", "/api/results/subjects/access", subjectBody({ download: true }));
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="([^"]+)"/.exec(disposition);
  saveBlob(await response.blob(), match ? match[1] : "export.json");
}

function armErasure() {
  subjectBody({}); // refuses an empty id before asking for confirmation
  $("subject-erase-confirm").hidden = false;
  $("subject-erase-confirm").focus();
}

async function eraseSubject() {
  $("subject-erase-confirm").hidden = true;
  const response = await call("POST", "/api/results/subjects/erasure", subjectBody({}));
  const erased = await response.json();
  await lookUp();
  $("subject-summary").textContent =
    `erased ${erased.deleted} prediction(s) and ${erased.deleted_feedback} feedback item(s) at ${erased.erased_at}. ` +
    $("subject-summary").textContent;
}

// ------------------------------------------------------------------ audit report

const STATUS_CLASS = { pass: "ok", fail: "bad", warning: "warn", not_measured: "muted" };

async function loadReport() {
  const response = await call("GET", "/api/reports/latest");
  const data = await response.json();
  const compliance = data.report.compliance || {};
  const usage = data.report.usage || {};
  const summary = Object.entries(compliance.summary || {}).map(([k, v]) => `${v} ${k}`).join(", ");
  $("report-summary").textContent =
    `${data.name}, generated ${data.generated_at}: overall ${String(compliance.overall || "?").toUpperCase()} (${summary}); ` +
    `${usage.predictions ?? "?"} prediction(s) from ${usage.distinct_users ?? "?"} data subject(s) in the period.`;
  const body = $("report-checks").querySelector("tbody");
  body.replaceChildren();
  for (const check of compliance.checks || []) {
    const tr = document.createElement("tr");
    cell(tr, check.status).className = STATUS_CLASS[check.status] || "";
    cell(tr, check.title);
    body.appendChild(tr);
  }
  const plots = $("report-plots");
  for (const old of plots.querySelectorAll("img")) URL.revokeObjectURL(old.src);
  plots.replaceChildren();
  for (const name of data.plots) {
    const image = await call("GET", `/api/reports/latest/plots/${encodeURIComponent(name)}`);
    const img = document.createElement("img");
    img.alt = name;
    img.src = URL.createObjectURL(await image.blob());
    plots.appendChild(img);
  }
  $("report-result").hidden = false;
}

async function downloadReport() {
  const response = await call("GET", "/api/reports/latest.html");
  saveBlob(await response.blob(), "audit_report.html");
}

// ------------------------------------------------------------------ wiring

function wire() {
  showKeyState();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_ITEM, key);
    $("api-key").value = "";
    clearError();
    showKeyState();
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    showKeyState();
  });
  $("detect-form").addEventListener("submit", (event) => event.preventDefault());
  $("image-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    guarded(() => detect(file)).finally(() => { event.target.value = ""; });
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    guarded(() => detect(event.dataTransfer.files[0]));
  });
  window.addEventListener("resize", drawBoxes);
  $("subject-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(lookUp);
  });
  $("subject-export").addEventListener("click", () => guarded(exportSubject));
  $("subject-erase").addEventListener("click", () => guarded(async () => armErasure()));
  $("subject-erase-confirm").addEventListener("click", () => guarded(eraseSubject));
  $("report-load").addEventListener("click", () => guarded(loadReport));
  $("report-download").addEventListener("click", () => guarded(downloadReport));
}

document.addEventListener("DOMContentLoaded", wire);
