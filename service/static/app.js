// The try-on page: calls the public API exactly as a shop's frontend would (fetch + FormData),
// so it is also the example to copy. Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const PERSON_FIELDS = ["person", "keypoints", "masked_model", "pose"];
const EXAMPLES = {person: "person.jpg", keypoints: "person_keypoints.json", cloth: "cloth.png"};
const NDJSON = "application/x-ndjson";

// The files chosen so far: one per person-side field, and the garments in order.
const chosen = {person: null, keypoints: null, masked_model: null, pose: null, cloth: []};
const objectUrls = [];  // result and preview URLs, released when the page is cleared
const $ = (id) => document.getElementById(id);

// ---- where the service is ----------------------------------------------------------------

// The page's own server by default; ?api=URL (or the Service URL field) points it at another one,
// which must then allow this page's origin (TRYON_CORS_ORIGINS).
function apiBase() {
  const typed = $("api-base").value.trim();
  if (typed) return typed.replace(/\/+$/, "");
  return location.protocol.startsWith("http") ? location.origin : "http://127.0.0.1:8000";
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? {Authorization: `Bearer ${key}`} : {};
}

let statusTimer = null;

async function refreshStatus() {
  clearTimeout(statusTimer);
  const pill = $("service-status");
  try {
    const res = await fetch(`${apiBase()}/readyz`);
    const info = await res.json();
    pill.dataset.state = info.status;
    pill.textContent = info.ready ? `ready · ${info.device} · ${info.image_size.join("×")}` : info.status;
    showWeights(info.random_weights, info.weights, info.weights_sha256);
    if (!info.ready) statusTimer = setTimeout(refreshStatus, 2000);
  } catch (err) {
    pill.dataset.state = "unreachable";
    pill.textContent = "service unreachable";
    statusTimer = setTimeout(refreshStatus, 5000);
  }
}

function showWeights(random, name, sha256) {
  $("random-weights").hidden = !random;
  if (name) {
    $("weights-line").textContent = random ? "Weights: random (no checkpoint found)."
      : `Weights: ${name}${sha256 ? ` (sha256 ${sha256.slice(0, 12)}…)` : ""}.`;
  }
}

// ---- choosing files ----------------------------------------------------------------------

function keep(url) {
  objectUrls.push(url);
  return url;
}

function setPersonField(field, file) {
  chosen[field] = file;
  const zone = document.querySelector(`.zone[data-field="${field}"]`);
  const preview = zone.querySelector(".preview");
  if (preview) {
    preview.hidden = !file;
    if (file) preview.src = keep(URL.createObjectURL(file));
  }
  const name = zone.querySelector(".file-name");
  if (name) name.textContent = file ? file.name : "";
  zone.querySelector(".remove").hidden = !file;
  zone.classList.toggle("filled", Boolean(file));
  if (file && (field === "masked_model" || field === "pose")) $("prepared").open = true;
}

function addGarments(files) {
  chosen.cloth.push(...files);
  renderGarments();
}

function renderGarments() {
  const list = $("garments");
  list.replaceChildren(...chosen.cloth.map((file, index) => {
    const item = document.createElement("li");
    const thumb = document.createElement("img");
    thumb.alt = file.name;
    thumb.src = keep(URL.createObjectURL(file));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.title = `Remove ${file.name}`;
    remove.textContent = "×";
    remove.addEventListener("click", () => {
      chosen.cloth.splice(index, 1);
      renderGarments();
    });
    const caption = document.createElement("span");
    caption.textContent = file.name;
    item.append(thumb, caption, remove);
    return item;
  }));
  document.querySelector('.zone[data-field="cloth"]').classList.toggle("filled", chosen.cloth.length > 0);
}

function take(field, files) {
  if (!files.length) return;
  if (field === "cloth") addGarments([...files]);
  else setPersonField(field, files[0]);
}

function wireZone(zone) {
  const field = zone.dataset.field;
  const input = zone.querySelector("input[type=file]");
  input.addEventListener("change", () => {
    take(field, input.files);
    input.value = "";  // choosing the same file again still counts
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    take(field, event.dataTransfer.files);
  });
  const remove = zone.querySelector(".remove");
  if (remove) {
    remove.addEventListener("click", (event) => {
      event.preventDefault();  // inside the label: do not open the file chooser
      setPersonField(field, null);
    });
  }
}

async function loadExamples() {
  clearAll();
  try {
    for (const [field, name] of Object.entries(EXAMPLES)) {
      const res = await fetch(`${apiBase()}/examples/${name}`);
      if (!res.ok) throw await errorOf(res);
      take(field, [new File([await res.blob()], name, {type: res.headers.get("Content-Type") || ""})]);
    }
  } catch (err) {
    showError(err.status ? err : unreachable(err));
  }
}

function clearAll() {
  for (const field of PERSON_FIELDS) setPersonField(field, null);
  chosen.cloth = [];
  renderGarments();
  clearOutput();
  objectUrls.splice(0).forEach((url) => URL.revokeObjectURL(url));
}

// ---- the request ---------------------------------------------------------------------------

// The person-side inputs and the garments, as the API's multipart fields.
function requestBody() {
  const body = new FormData();
  for (const field of PERSON_FIELDS) {
    if (chosen[field]) body.append(field, chosen[field], chosen[field].name);
  }
  for (const file of chosen.cloth) body.append("cloth", file, file.name);
  return body;
}

async function tryOn(event) {
  event.preventDefault();
  clearOutput();
  const batch = chosen.cloth.length > 1;
  const path = batch ? "/v1/tryon/batch" : "/v1/tryon";
  const query = new URLSearchParams({format: $("format").value, size: $("size").value});
  const headers = {...authHeaders(), ...(batch ? {Accept: NDJSON} : {})};
  $("request-line").textContent = `POST ${path} …`;
  $("submit").disabled = true;
  const started = performance.now();
  try {
    const res = await fetch(`${apiBase()}${path}?${query}`, {method: "POST", body: requestBody(), headers});
    const weights = res.headers.get("X-Weights");
    if (weights) showWeights(weights === "random");
    if (!res.ok) {
      showError(await errorOf(res));
      return;
    }
    showTimings(serverTiming(res.headers.get("Server-Timing")));
    if (batch) {
      await readParts(res, started);
    } else {
      const image = await res.blob();
      addResult(0, {image, mediaType: image.type, seconds: (performance.now() - started) / 1000});
    }
    const total = ((performance.now() - started) / 1000).toFixed(2);
    $("request-line").textContent = `POST ${path}: ${res.status}, ${total} s in all` +
      (res.headers.get("X-Request-ID") ? ` · request ${res.headers.get("X-Request-ID")}` : "");
    if ($("show-inputs").checked) await showModelView();
  } catch (err) {
    showError(unreachable(err));
  } finally {
    $("submit").disabled = false;
  }
}

// /v1/tryon/batch as NDJSON: one JSON line per garment, in input order, each shown as it arrives.
async function readParts(res, started) {
  chosen.cloth.forEach((file, index) => addPending(index, file.name));
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffered += value;
    let end;
    while ((end = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, end).trim();
      buffered = buffered.slice(end + 1);
      if (line) showPart(JSON.parse(line), (performance.now() - started) / 1000);
    }
  }
  for (const left of document.querySelectorAll('.result-card[data-state="pending"]')) {
    addResult(Number(left.dataset.index), {seconds: (performance.now() - started) / 1000, error: {
      status: 0, code: "incomplete", field: null, message: "the answer ended before this garment's result"}});
  }
}

function showPart(part, seconds) {
  if (part.status !== 200) {
    addResult(part.index, {error: {status: part.status, ...part.error}, seconds});
    return;
  }
  const bytes = Uint8Array.from(atob(part.image), (c) => c.charCodeAt(0));
  const timings = Object.entries(part).filter(([key]) => key.endsWith("_ms"))
    .map(([key, dur]) => ({name: key.slice(0, -3), dur}));
  addResult(part.index, {image: new Blob([bytes], {type: part.media_type}), mediaType: part.media_type,
                         seconds, timings});
}

// ---- what the model saw: /v1/prepare with the same person and the first garment ------------

async function showModelView() {
  const body = new FormData();
  for (const field of PERSON_FIELDS) {
    if (chosen[field]) body.append(field, chosen[field], chosen[field].name);
  }
  if (chosen.cloth.length) body.append("cloth", chosen.cloth[0], chosen.cloth[0].name);
  const res = await fetch(`${apiBase()}/v1/prepare`, {method: "POST", body,
                                                      headers: {...authHeaders(), Accept: "application/json"}});
  const view = $("model-view");
  view.hidden = false;
  if (!res.ok) {
    const error = await errorOf(res);
    $("model-view-line").textContent = `POST /v1/prepare: HTTP ${error.status} ${error.code}: ${error.message}`;
    return;
  }
  const saw = await res.json();
  for (const name of ["masked_model", "pose", "cloth", "mask"]) {
    const card = $(`saw-${name}-card`);
    if (card) card.hidden = !saw[name];
    if (saw[name]) $(`saw-${name}`).src = `data:${saw.media_type};base64,${saw[name]}`;
  }
  $("saw-photo-card").hidden = !(saw.box && chosen.person);
  $("model-view-line").textContent = `${saw.size[1]}×${saw.size[0]} px` +
    (saw.box ? ` · box ${saw.box.join(", ")} (left, top, right, bottom) in the photo's pixels` : "");
  if (saw.box && chosen.person) await drawBox(saw.box);
}

// The box over the photo as the browser shows it (upright, EXIF applied). The frame holds both,
// so a box that reaches past the photo's edges (padded there for the model) is drawn past them.
async function drawBox([left, top, right, bottom]) {
  const photo = $("saw-photo");
  photo.src = keep(URL.createObjectURL(chosen.person));
  await photo.decode();
  const [width, height] = [photo.naturalWidth, photo.naturalHeight];
  const [x0, y0] = [Math.min(0, left), Math.min(0, top)];
  const [spanX, spanY] = [Math.max(width, right) - x0, Math.max(height, bottom) - y0];
  const place = (element, x, y, w, h) => Object.assign(element.style, {
    left: `${(100 * (x - x0)) / spanX}%`, top: `${(100 * (y - y0)) / spanY}%`,
    width: `${(100 * w) / spanX}%`, height: `${(100 * h) / spanY}%`,
  });
  photo.parentElement.style.aspectRatio = `${spanX} / ${spanY}`;
  place(photo, 0, 0, width, height);
  place($("saw-box"), left, top, right - left, bottom - top);
  $("saw-box").dataset.box = [left, top, right, bottom].join(",");
}

// The error body {"error": {code, message, field}}; anything else (a proxy's page) still gives one.
async function errorOf(res) {
  let body = null;
  try {
    body = await res.json();
  } catch (err) {
    body = null;
  }
  const error = body && body.error ? body.error
    : {code: `http_${res.status}`, message: res.statusText || "the request failed", field: null};
  return {status: res.status, ...error};
}

function unreachable(err) {
  return {status: 0, code: "unreachable", field: null,
          message: `Could not reach the service at ${apiBase()} (${err.message}). From another origin, ` +
                   "the service must list this page's origin in TRYON_CORS_ORIGINS."};
}

function serverTiming(header) {
  return (header || "").split(",").map((item) => {
    const [name, ...params] = item.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return {name, dur: dur ? Number(dur.slice(4)) : NaN};
  }).filter((t) => t.name && !Number.isNaN(t.dur));
}

// ---- showing what came back ----------------------------------------------------------------

function clearOutput() {
  $("error").hidden = true;
  $("timings").hidden = true;
  $("results").replaceChildren();
  $("model-view").hidden = true;
  document.querySelectorAll(".at-fault").forEach((el) => el.classList.remove("at-fault"));
}

function showError(error) {
  $("error-status").textContent = error.status ? `HTTP ${error.status}` : "No answer";
  $("error-code").textContent = error.code;
  $("error-message").textContent = error.message;
  $("error-field").textContent = error.field || "—";
  $("error").hidden = false;
  $("request-line").textContent = "The service refused the request:";
  for (const field of (error.field || "").split(",")) {
    const zone = document.querySelector(`.zone[data-field="${field.trim()}"]`);
    if (zone) zone.classList.add("at-fault");
  }
}

function showTimings(timings) {
  $("timings").replaceChildren(...timings.flatMap(({name, dur}) => {
    const term = document.createElement("dt");
    term.textContent = name;
    const value = document.createElement("dd");
    value.textContent = `${dur.toFixed(1)} ms`;
    return [term, value];
  }));
  $("timings").hidden = timings.length === 0;
}

function card(index) {
  let el = document.querySelector(`.result-card[data-index="${index}"]`);
  if (!el) {
    el = document.createElement("figure");
    el.className = "result-card";
    el.dataset.index = index;
    $("results").append(el);
  }
  return el;
}

function addPending(index, name) {
  const el = card(index);
  el.dataset.state = "pending";
  const wait = document.createElement("div");
  wait.className = "placeholder";
  wait.textContent = `dressing ${name}…`;
  el.replaceChildren(wait);
}

function addResult(index, {image, mediaType, error, seconds, timings = []}) {
  const el = card(index);
  const name = chosen.cloth[index] ? chosen.cloth[index].name : `garment ${index + 1}`;
  const caption = document.createElement("figcaption");
  const title = document.createElement("strong");
  title.textContent = `${index + 1}. ${name}`;
  const facts = document.createElement("span");
  facts.className = "muted";
  const parts = [`after ${seconds.toFixed(2)} s`, ...timings.map(({name, dur}) => `${name} ${dur.toFixed(1)} ms`)];
  facts.textContent = parts.join(" · ");
  caption.append(title, facts);
  if (error) {
    el.dataset.state = "error";
    const box = document.createElement("div");
    box.className = "error part-error";
    box.innerHTML = "<p class=\"error-head\"></p><p class=\"message\"></p><p class=\"error-field\">Field: <code></code></p>";
    box.querySelector(".error-head").textContent = error.status ? `HTTP ${error.status} ${error.code}` : error.code;
    box.querySelector(".message").textContent = error.message;
    box.querySelector("code").textContent = error.field || "—";
    el.replaceChildren(box, caption);
    return;
  }
  el.dataset.state = "done";
  const url = keep(URL.createObjectURL(image));
  const img = document.createElement("img");
  img.className = "result";
  img.alt = `try-on result ${index + 1}`;
  img.src = url;
  const link = document.createElement("a");
  link.href = url;
  link.download = `tryon-${index + 1}.${(mediaType.split("/")[1] || "img").replace("jpeg", "jpg")}`;
  link.textContent = "download";
  caption.append(link);
  el.replaceChildren(img, caption);
}

// ---- start ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const api = new URLSearchParams(location.search).get("api");
  if (api) $("api-base").value = api;
  document.querySelectorAll(".zone").forEach(wireZone);
  $("tryon-form").addEventListener("submit", tryOn);
  $("load-examples").addEventListener("click", loadExamples);
  $("clear").addEventListener("click", clearAll);
  $("api-base").addEventListener("change", refreshStatus);
  refreshStatus();
});
