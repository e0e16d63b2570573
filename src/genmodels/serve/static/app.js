// The genmodels web page: a client of the same A1111 /sdapi/v1 API that other tools use.
"use strict";

const API = "/sdapi/v1";
const $ = (id) => document.getElementById(id);
const state = { busy: false, initDataUrl: null, cursor: { x: 0, y: 0 }, painting: false };

async function api(path, options = {}) {
  const init = { headers: { "content-type": "application/json" }, ...options };
  const response = await fetch(API + path, init);
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    let detail = body && body.detail !== undefined ? body.detail : text;
    if (Array.isArray(detail)) {  // FastAPI validation errors
      detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("\n");
    }
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function fillSelect(select, items, value, label = (x) => x.name, key = (x) => x.name) {
  select.replaceChildren(...items.map((item) => {
    const option = document.createElement("option");
    option.value = key(item);
    option.textContent = label(item);
    return option;
  }));
  if (value !== undefined) select.value = value;
}

async function loadLists() {
  const [samplers, schedulers, models, options] = await Promise.all([
    api("/samplers"), api("/schedulers"), api("/sd-models"), api("/options")]);
  fillSelect($("sampler"), samplers, "Euler a");
  fillSelect($("scheduler"), schedulers, "automatic", (s) => s.label);
  const title = (m) => m.title;
  fillSelect($("model"), models, options.sd_model_checkpoint, title, title);
  $("model").dataset.current = $("model").value;
}

async function switchModel() {
  const select = $("model");
  select.disabled = true;
  $("model-status").textContent = "Loading…";
  try {
    await api("/options", { method: "POST",
                            body: JSON.stringify({ sd_model_checkpoint: select.value }) });
    await loadLists();
    $("model-status").textContent = `Loaded ${$("model").value}`;
  } catch (err) {
    $("model-status").textContent = "";
    select.value = select.dataset.current;
    showError(err.message);
  } finally {
    select.disabled = false;
  }
}

// -- mode, input image and mask ----------------------------------------------------------

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function updateMode() {
  const m = mode();
  $("image-input").hidden = m === "txt2img";
  $("mask-tools").hidden = m !== "inpaint";
  $("mask-canvas").hidden = m !== "inpaint";
  $("canvas-box").hidden = m === "txt2img" || !state.initDataUrl;
}

function setInitImage(dataUrl) {
  const image = new Image();
  image.onload = () => {
    state.initDataUrl = dataUrl;
    for (const id of ["init-canvas", "mask-canvas"]) {
      $(id).width = image.naturalWidth;
      $(id).height = image.naturalHeight;
    }
    $("init-canvas").getContext("2d").drawImage(image, 0, 0);
    $("width").value = Math.max(8, Math.floor(image.naturalWidth / 8) * 8);
    $("height").value = Math.max(8, Math.floor(image.naturalHeight / 8) * 8);
    state.cursor = { x: image.naturalWidth / 2, y: image.naturalHeight / 2 };
    moveCursor(0, 0);
    updateMode();
  };
  image.onerror = () => showError("That file is not an image the browser can read.");
  image.src = dataUrl;
}

function readFile(file) {
  const reader = new FileReader();
  reader.onload = () => setInitImage(reader.result);
  reader.readAsDataURL(file);
}

function paint(x, y, erase) {
  const ctx = $("mask-canvas").getContext("2d");
  ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  ctx.arc(x, y, Number($("brush").value) / 2, 0, 2 * Math.PI);
  ctx.fill();
}

function canvasPoint(event) {
  const canvas = $("mask-canvas");
  const rect = canvas.getBoundingClientRect();
  return { x: (event.clientX - rect.left) * canvas.width / rect.width,
           y: (event.clientY - rect.top) * canvas.height / rect.height };
}

function moveCursor(dx, dy) {
  const canvas = $("mask-canvas");
  const c = state.cursor;
  c.x = Math.min(canvas.width, Math.max(0, c.x + dx));
  c.y = Math.min(canvas.height, Math.max(0, c.y + dy));
  const ring = $("brush-cursor");
  const size = 100 * Number($("brush").value) / Math.max(1, canvas.width);
  Object.assign(ring.style, { left: `${100 * c.x / canvas.width}%`,
                              top: `${100 * c.y / canvas.height}%`,
                              width: `${size}%`, aspectRatio: "1" });
}

function maskKeys(event) {
  const step = Math.max(1, Number($("brush").value) / 2) * (event.shiftKey ? 4 : 1);
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0],
                  ArrowUp: [0, -step], ArrowDown: [0, step] };
  if (moves[event.key]) {
    moveCursor(...moves[event.key]);
    if (state.keyPaint) paint(state.cursor.x, state.cursor.y, state.keyPaint === "erase");
  } else if (event.key === " " || event.key === "Delete") {
    state.keyPaint = event.key === " " ? "paint" : "erase";
    paint(state.cursor.x, state.cursor.y, state.keyPaint === "erase");
  } else {
    return;
  }
  event.preventDefault();
}

function maskAll(fill) {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  ctx.globalCompositeOperation = "source-over";
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (fill) { ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
}

function invertMask() {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < data.data.length; i += 4) {
    data.data[i] = data.data[i + 1] = data.data[i + 2] = 255;
    data.data[i + 3] = 255 - data.data[i + 3];
  }
  ctx.putImageData(data, 0, 0);
}

function maskDataUrl() {  // white = repaint on black, the size of the input image
  const src = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = src.width;
  out.height = src.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(src, 0, 0);
  return out.toDataURL("image/png");
}

// -- generation and progress ------------------------------------------------------------

function payload() {
  const number = (id) => Number($(id).value);
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative_prompt").value,
    sampler_name: $("sampler").value, scheduler: $("scheduler").value,
    steps: number("steps"), cfg_scale: number("cfg_scale"), width: number("width"),
    height: number("height"), seed: number("seed"), batch_size: number("batch_size"),
    save_images: $("save_images").checked,
  };
  if (mode() !== "txt2img") {
    if (!state.initDataUrl) throw new Error("Choose an input image first.");
    body.init_images = [state.initDataUrl];
    body.denoising_strength = number("denoising_strength");
    if (mode() === "inpaint") body.mask = maskDataUrl();
  }
  return body;
}

function setBusy(busy) {
  state.busy = busy;
  $("generate").disabled = busy;
  $("interrupt").disabled = !busy;
  $("form").setAttribute("aria-busy", String(busy));
}

async function pollProgress() {
  while (state.busy) {
    try {
      const p = await api("/progress");
      if (!state.busy) break;
      $("progress").value = p.progress;
      const eta = p.eta_relative > 0 ? `, about ${Math.ceil(p.eta_relative)} s left` : "";
      $("progress-text").textContent = p.textinfo ? `${p.textinfo}${eta}` : "Waiting…";
      if (p.current_image) {
        $("preview").src = `data:image/png;base64,${p.current_image}`;
        $("preview").hidden = false;
      }
    } catch (err) { /* the next poll tries again */ }
    await new Promise((resolve) => setTimeout(resolve, 400));
  }
}

async function generate(event) {
  event.preventDefault();
  showError("");
  let body;
  try { body = payload(); } catch (err) { showError(err.message); return; }
  setBusy(true);
  $("progress").value = 0;
  $("progress-text").textContent = "Queued…";
  const polling = pollProgress();
  try {
    const path = mode() === "txt2img" ? "/txt2img" : "/img2img";
    const result = await api(path, { method: "POST", body: JSON.stringify(body) });
    const info = JSON.parse(result.info);
    const images = result.images.slice(info.index_of_first_image || 0);
    for (let i = images.length - 1; i >= 0; i--) addToGallery(images[i], info.infotexts[i] || "");
    $("progress").value = 1;
    $("progress-text").textContent = `Done: ${images.length} image(s)`;
  } catch (err) {
    showError(err.message);
    $("progress-text").textContent = "Failed";
  } finally {
    setBusy(false);
    $("preview").hidden = true;
    await polling;
  }
}

function addToGallery(b64, infotext) {
  const item = $("gallery-item").content.firstElementChild.cloneNode(true);
  const src = `data:image/png;base64,${b64}`;
  const img = item.querySelector("img");
  img.src = src;
  img.alt = `Generated image: ${infotext.split("\n")[0].slice(0, 120)}`;
  item.querySelector(".infotext").textContent = infotext;
  const seed = /Seed: (\d+)/.exec(infotext);
  item.querySelector(".download").href = src;
  item.querySelector(".download").download = `genmodels-${seed ? seed[1] : "image"}.png`;
  item.querySelector(".to-form").addEventListener("click", () => sendToForm(b64));
  item.querySelector(".to-input").addEventListener("click", () => {
    document.querySelector("input[name=mode][value=img2img]").checked = true;
    setInitImage(src);
    $("denoising_strength").focus();
  });
  $("gallery").prepend(item);
}

async function sendToForm(b64) {
  try {
    const { parameters: p } = await api("/png-info", { method: "POST",
                                                       body: JSON.stringify({ image: b64 }) });
    const set = (id, value) => { if (value !== undefined) $(id).value = value; };
    set("prompt", p.Prompt);
    set("negative_prompt", p["Negative prompt"]);
    set("steps", p.Steps);
    set("cfg_scale", p["CFG scale"]);
    set("seed", p.Seed);
    set("width", p["Size-1"]);
    set("height", p["Size-2"]);
    set("denoising_strength", p["Denoising strength"]);
    const pick = (select, text) => {
      const option = [...select.options].find((o) => o.value === text || o.text === text);
      if (option) select.value = option.value;
    };
    if (p.Sampler) pick($("sampler"), p.Sampler);
    if (p["Schedule type"]) pick($("scheduler"), p["Schedule type"]);
    $("prompt").focus();
  } catch (err) {
    showError(err.message);
  }
}

// -- wiring -------------------------------------------------------------------------------

function wire() {
  $("form").addEventListener("submit", generate);
  $("interrupt").addEventListener("click", () => api("/interrupt", { method: "POST" })
    .catch((err) => showError(err.message)));
  $("random-seed").addEventListener("click", () => { $("seed").value = -1; });
  $("model").addEventListener("change", switchModel);
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", updateMode);
  }
  $("init_image").addEventListener("change", (e) => {
    if (e.target.files.length) readFile(e.target.files[0]);
  });
  const mask = $("mask-canvas");
  mask.addEventListener("pointerdown", (e) => {
    state.painting = true;
    mask.setPointerCapture(e.pointerId);
    const p = canvasPoint(e);
    paint(p.x, p.y, e.button === 2 || e.altKey);
  });
  mask.addEventListener("pointermove", (e) => {
    if (!state.painting) return;
    const p = canvasPoint(e);
    paint(p.x, p.y, e.altKey);
  });
  mask.addEventListener("pointerup", () => { state.painting = false; });
  mask.addEventListener("keydown", maskKeys);
  mask.addEventListener("keyup", (e) => {
    if (e.key === " " || e.key === "Delete") state.keyPaint = null;
  });
  $("brush").addEventListener("change", () => moveCursor(0, 0));
  $("mask-clear").addEventListener("click", () => maskAll(false));
  $("mask-fill").addEventListener("click", () => maskAll(true));
  $("mask-invert").addEventListener("click", invertMask);
  updateMode();
  loadLists().catch((err) => showError(`Cannot reach the server: ${err.message}`));
}

document.addEventListener("DOMContentLoaded", wire);
