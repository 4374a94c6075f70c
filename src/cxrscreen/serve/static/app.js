// cxrscreen web page: upload one X-ray, show the server's result. No external resources.
"use strict";

const page = {
  apiKey: null,
  imageUrl: null,
  overlayUrl: null,
  busy: false,
};

const $ = (id) => document.getElementById(id);
const maxUploadBytes = Number(document.body.dataset.maxUploadMb) * 1024 * 1024;

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function callApi(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (page.apiKey) headers.set("X-API-Key", page.apiKey);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError("the server could not be reached", 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    if (response.status === 401) $("api-key-row").hidden = false;
    const message = body && body.error ? body.error : `request failed (HTTP ${response.status})`;
    throw new ApiError(message, response.status);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(message) {
  $("status").textContent = message;
}

async function loadModelInfo() {
  try {
    const card = await callApi("/v1/model");
    $("model-info").textContent =
      `Model: ${card.name} v${card.version} (${card.arch}, ${card.input_size} px), classes: ${card.classes.join(", ")}`;
    $("notice").textContent = card.notice;
    showDrift(card.drift);
  } catch (err) {
    $("model-info").textContent =
      err.status === 401 ? "Enter the API key to use this service." : `Model information unavailable: ${err.message}`;
  }
}

// The server's drift statistic: recent images no longer look like the model's own validation images.
function showDrift(drift) {
  const alarm = Boolean(drift && drift.alarm);
  $("drift-alarm").hidden = !alarm;
  $("drift-alarm").textContent = alarm
    ? `Drift alarm: the recent images no longer look like this model's validation images (${drift.summary}). ` +
      "Its results on them may not be as good as measured."
    : "";
}

function renderBars(probabilities, topClass) {
  const list = $("probabilities");
  list.replaceChildren();
  for (const [name, p] of Object.entries(probabilities)) {
    const item = document.createElement("li");
    if (name === topClass) item.classList.add("top");
    const label = document.createElement("span");
    label.className = "bar-name";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${(p * 100).toFixed(1)}%`;
    item.append(label, track, value);
    list.append(item);
  }
}

function showImage() {
  const showOverlay = $("heatmap-toggle").checked && page.overlayUrl;
  const img = $("xray");
  img.src = showOverlay ? page.overlayUrl : page.imageUrl;
  img.alt = showOverlay ? "The X-ray with the Grad-CAM heatmap over it" : "The uploaded X-ray";
}

function renderKnownLimits(limits) {
  const list = $("known-limits-list");
  list.replaceChildren();
  for (const limit of limits || []) {
    const item = document.createElement("li");
    item.textContent = limit;
    list.append(item);
  }
  $("known-limits").hidden = list.childElementCount === 0;
}

const percent = (p) => `${(p * 100).toFixed(1)}%`;

// "Most likely" is said only of the most probable class; when a decision threshold chose the label, the page names
// the threshold, its cut-off and the class with the longest bar.
function decisionText(decision, probabilities) {
  if (!decision || decision.rule === "most_probable") return "";
  const top = decision.most_probable;
  const topNote = decision.label === top ? "" : ` The most probable class is ${top} (${percent(probabilities[top])}).`;
  if (decision.rule === "threshold") {
    const p = probabilities[decision.label];
    return `Decided by a decision threshold: ${decision.label} is named when its probability reaches ` +
      `${percent(decision.threshold)} (here ${percent(p)}).${topNote}`;
  }
  const below = Object.entries(decision.below_threshold).map(([name, cut]) => `${name} below ${percent(cut)}`);
  return `No class reached its decision threshold (${below.join(", ")}), so the label is the most probable ` +
    `of the other classes.${topNote}`;
}

function showDecision(result) {
  const decision = result.decision;
  const mostLikely = decision ? decision.label === decision.most_probable : false;
  $("verdict-lead").textContent = mostLikely ? "Most likely:" : decision ? "Screening label:" : "Result:";
  const note = decisionText(decision, result.probabilities);
  $("decision-note").textContent = note;
  $("decision-note").hidden = note === "";
}

function showResult(fileName, result) {
  const top = Object.entries(result.probabilities).reduce((a, b) => (b[1] > a[1] ? b : a))[0];
  page.imageUrl = `data:image/png;base64,${result.image_png}`;
  page.overlayUrl = result.explanation ? `data:image/png;base64,${result.explanation.overlay_png}` : null;
  $("viewer").hidden = false;
  $("caption").textContent = `${fileName} (${result.format.toUpperCase()})`;
  $("heatmap-toggle").disabled = !page.overlayUrl;
  showImage();

  $("predicted-class").textContent = result.label;
  showDecision(result);
  $("ood-warning").hidden = result.in_distribution !== false;
  $("lungs-warning").hidden = result.lungs_found !== false;
  renderBars(result.probabilities, top);
  $("heatmap-note").textContent = result.explanation
    ? `The heatmap shows where the model found evidence for "${result.explanation.target}"; it is not a lesion map.`
    : "";
  renderKnownLimits(result.known_limits);
  $("notice").textContent = result.notice;
  $("result").hidden = false;
}

function resetResult() {
  $("result").hidden = true;
  $("viewer").hidden = true;
  $("heatmap-toggle").checked = false;
  $("heatmap-toggle").disabled = true;
  page.imageUrl = page.overlayUrl = null;
}

async function analyse(file) {
  if (page.busy) return;
  clearError();
  resetResult();
  if (file.size > maxUploadBytes) {
    showError(`${file.name}: larger than the ${document.body.dataset.maxUploadMb} MB limit`);
    return;
  }
  page.busy = true;
  $("drop-zone").setAttribute("aria-busy", "true");
  setStatus(`Analysing ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const result = await callApi("/v1/predict?explain=true&image=true", { method: "POST", body: form });
    showResult(file.name, result);
    loadModelInfo(); // the drift statistic may have changed with this image
    setStatus(`Analysed ${file.name}.`);
  } catch (err) {
    showError(err.message);
    setStatus("");
  } finally {
    page.busy = false;
    $("drop-zone").removeAttribute("aria-busy");
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  // A file dropped beside the zone must not make the browser navigate away.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
  zone.addEventListener("dragover", () => zone.classList.add("dragging"));
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) analyse(file);
  });
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) analyse(file);
    event.target.value = "";
  });
}

function setUpApiKey() {
  const use = () => {
    page.apiKey = $("api-key").value.trim() || null;
    clearError();
    loadModelInfo();
  };
  $("api-key-save").addEventListener("click", use);
  $("api-key").addEventListener("keydown", (event) => {
    if (event.key === "Enter") use();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDropZone();
  setUpApiKey();
  $("heatmap-toggle").addEventListener("change", showImage);
  loadModelInfo();
});
