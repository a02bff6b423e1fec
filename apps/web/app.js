// The demo page: pick a model, give it an image, see the top-3 classes. Everything runs here,
// with onnxruntime-web loaded from node_modules/ (pinned in package-lock.json; no CDN).
//
// URL parameters: ?model=resnet22 (initial model), ?ep=auto|wasm|webgpu (execution provider;
// auto = WebGPU when the browser offers an adapter, else WebAssembly), ?threads=N (WebAssembly
// threads; default: onnxruntime-web's choice), ?precision=fp32|fp16|int8 (default: the model's,
// int8 where it agrees with fp32 on >= 99 % of the validation images).
//
// Speed: a model file is loaded once per precision, with the batch dimension fixed to 1
// (freeDimensionOverrides, so shapes are known when the graph is optimised) and warmed up until
// WebAssembly has compiled its hot kernels; one input tensor per session is reused. Each image
// is then timed over a short burst (best and median are shown) and per stage (demo.last.stages).
//
// window.apertureDemo exposes the state and the last result (pixels, logits, probabilities,
// time) so tests and benchmarks can read exactly what the page computed.

import { hasTranslucency, resizeBilinearRGB, rgbaToRgb, softmax, toPixelValues } from "./preprocess.js";

const BURST = 10;          // runs per image for the shown best / median…
const BURST_MS = 2000;     // …or fewer (at least 3) when they take longer than this (a software GPU)
const WARMUP_MS = 1500;    // warm-up this long (>= 2 runs, <= 50), so WebAssembly tiers up before timing

const ORT_DIR = "./node_modules/onnxruntime-web/dist/";
const MAX_PIXELS = 64e6;
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

let ort = null;
let ep = "wasm";
let epNote = "";            // why WebGPU was asked for but is not used
let threads = 1;
let threadNote = "";        // why WebAssembly runs on one thread when more were possible
let manifest = [];
let current = null;         // { entry, file, session, input }
const sessions = new Map(); // "name/precision" -> { session, input }
let lastInput = null;       // { blob, name, trueLabel } of the last image, re-run on a model change
let queue = Promise.resolve();

const demo = {
  state: "loading",
  runs: 0,
  errors: 0,
  model: null,
  precision: null,
  adapter: null,            // the WebGPU adapter, when there is one
  ep: null,
  threads: null,
  last: null,
  error: null,
  classify: (blob, name, trueLabel) => enqueue(() => classify(blob, name, trueLabel)),
  selectModel: (name, precision) => enqueue(() => selectModel(name, precision)),
  benchmark: (n) => enqueue(() => benchmark(n)),
};
window.apertureDemo = demo;

function setState(state) {
  demo.state = state;
  document.body.dataset.state = state;
}

function enqueue(task) {
  const run = queue.then(task);
  queue = run.catch(() => {});
  return run;
}

function showMessage(text, kind = "error") {
  const el = $("message");
  el.textContent = text;
  el.className = kind;
  el.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
}

function fail(text) {
  demo.error = text;
  demo.errors += 1;
  showMessage(text);
  setState(current ? "error" : "failed");
}

async function loadRuntime() {
  const want = params.get("ep") || "auto";
  let gpu = false;
  if (want !== "wasm" && navigator.gpu) {
    try {
      const adapter = await navigator.gpu.requestAdapter();
      gpu = !!adapter;
      if (adapter) {
        const info = adapter.info || {};
        demo.adapter = { vendor: info.vendor || "", architecture: info.architecture || "",
                         fallback: !!(info.isFallbackAdapter ?? adapter.isFallbackAdapter) };
      }
    } catch {
      gpu = false;
    }
  }
  if (want === "webgpu" && !gpu) epNote = "this browser offers no WebGPU adapter";
  const file = gpu ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs";
  try {
    ort = await import(ORT_DIR + file);
  } catch (err) {
    throw new Error(
      `onnxruntime-web could not be loaded from ${ORT_DIR}${file} (${err.message}): install it with ` +
      "`npm ci --prefix apps/web`, or start the page with `make demo`");
  }
  // Unset, onnxruntime-web picks min(4, cores / 2) threads when the page is cross-origin
  // isolated (as `aperture demo` serves it). Threads need SharedArrayBuffer, which browsers
  // give only to isolated pages: elsewhere the page still works, on one thread, and says so.
  const asked = Number(params.get("threads"));
  const shared = typeof SharedArrayBuffer !== "undefined" && self.crossOriginIsolated === true;
  if (!shared) {
    ort.env.wasm.numThreads = 1;
    threadNote = "single-threaded, slower: this page is not cross-origin isolated (no SharedArrayBuffer); " +
                 "serve it with `aperture demo` for multi-threaded WebAssembly";
  } else if (asked > 0) {
    ort.env.wasm.numThreads = asked;
  }
  ort.env.wasm.proxy = false; // inference on this thread: no worker hop per run
  ep = gpu ? "webgpu" : "wasm";
}

function runtimeLabel() {
  const name = ep === "webgpu" ? "WebGPU" : `WebAssembly, ${threads} thread${threads > 1 ? "s" : ""}`;
  const notes = ep === "wasm" ? [epNote, threadNote].filter(Boolean).join("; ") : "";
  return `onnxruntime-web ${ort.env.versions.common} · ${name}${notes ? ` (${notes})` : ""}`;
}

// The files of a model: from models.json's "files", or the single "file" of older manifests.
function modelFiles(entry) {
  return entry.files?.length ? entry.files : [{ precision: "fp32", file: entry.file, bytes: entry.bytes }];
}

function fileLabel(f) {
  const mb = f.bytes ? ` · ${(f.bytes / 1e6).toFixed(1)} MB` : "";
  const agree = f.agreement != null && f.precision !== "fp32"
    ? ` · ${f.agreement.toFixed(2)} % same top-1 as fp32 on ${f.agreement_images} test images` : "";
  const flip = f.tta ? " · flip TTA (image + mirror, 2x the compute)" : "";
  return `${f.precision}${flip}${mb}${agree}`;
}

// What the shown probabilities are, from the file's entry: said beside every result.
function probabilityLabel(f, calibrated) {
  const what = !calibrated ? "uncalibrated softmax"
    : f.calibrator != null ? `calibrated (${f.calibrator})`
    : f.temperature != null ? `calibrated (temperature ${Number(f.temperature).toPrecision(4)})`
    : f.calibrated == null ? "probabilities (calibration not recorded)" : "calibrated";
  return f.tta ? `${what}, flip TTA` : what;
}

function fillPrecisions(entry, chosen) {
  const select = $("precision");
  select.replaceChildren();
  for (const f of modelFiles(entry)) {
    const option = document.createElement("option");
    option.value = f.precision;
    option.textContent = fileLabel(f) + (f.precision === (entry.precision || "fp32") ? " (default)" : "");
    select.append(option);
  }
  select.value = chosen;
  const notes = [entry.weights_note, ...(entry.notes || [])].filter(Boolean).join("; ");
  $("precision-note").textContent = notes;
  $("precision-note").hidden = !notes;
}

async function loadManifest() {
  let response;
  try {
    response = await fetch("models/models.json", { cache: "no-cache" });
  } catch (err) {
    throw new Error(`models/models.json could not be fetched (${err.message}); serve the page with \`aperture demo\``);
  }
  if (!response.ok) {
    throw new Error("no exported models here (models/models.json is missing): start the page with " +
                    "`aperture demo`, which exports the models with published weights and serves them");
  }
  manifest = (await response.json()).models;
  const select = $("model");
  select.replaceChildren();
  for (const m of manifest) {
    const option = document.createElement("option");
    option.value = m.name;
    const size = m.params ? ` · ${(m.params / 1e6).toFixed(2)} M params` : "";
    const acc = m.top1 != null ? ` · ${m.top1.toFixed(2)} % test top-1` : "";
    option.textContent = m.available ? `${m.name}${size}${acc}` : `${m.name} — ${m.reason}`;
    option.disabled = !m.available;
    select.append(option);
  }
  const missing = manifest.filter((m) => !m.available && m.reason === "no published weights");
  if (missing.length) {
    $("unavailable").textContent =
      `No published weights, so not in this demo: ${missing.map((m) => m.name).join(", ")} ` +
      "(train one with `aperture train NAME`).";
    $("unavailable").hidden = false;
  }
  const available = manifest.filter((m) => m.available);
  if (!available.length) {
    throw new Error("no model of the zoo has published weights yet, so there is nothing to run; " +
                    "train one with `aperture train resnet22` and publish it");
  }
  select.disabled = false;
  select.addEventListener("change", () => demo.selectModel(select.value));
  $("precision").addEventListener("change", () => demo.selectModel(select.value, $("precision").value));
  const asked = params.get("model");
  const pick = available.find((m) => m.name === asked) || available.find((m) => m.name === "resnet22") || available[0];
  if (asked && pick.name !== asked) {
    showMessage(`Model ${asked} is not available here; showing ${pick.name}.`, "info");
  }
  return pick.name;
}

async function createSession(entry, file) {
  const url = `models/${file.file}`;
  // batch 1 known when the graph is optimised: shapes are static, buffers planned once
  const options = { graphOptimizationLevel: "all", freeDimensionOverrides: { batch: 1 } };
  if (ep === "webgpu") {
    try {
      return await ort.InferenceSession.create(url, { ...options, executionProviders: ["webgpu"] });
    } catch (err) {
      console.warn(`WebGPU session failed (${err.message}); falling back to WebAssembly`);
      epNote = "WebGPU failed, see the console";
      ep = "wasm";
    }
  }
  const session = await ort.InferenceSession.create(url, { ...options, executionProviders: ["wasm"] });
  threads = ort.env.wasm.numThreads || 1; // settled when the WebAssembly backend started
  return session;
}

// The input tensor of the type the file declares: float32, or float16 for a file exported with --fp16-io
// (a Float16Array: setting numbers into it rounds them to float16, and its outputs read back as numbers).
function inputTensor(session, h, w) {
  const meta = session.inputMetadata?.[0];
  const type = meta?.isTensor ? meta.type : "float32";
  if (type === "float32") {
    const data = new Float32Array(3 * h * w);
    return { data, input: new ort.Tensor("float32", data, [1, 3, h, w]) };
  }
  if (type === "float16" && typeof Float16Array === "function") {
    const data = new Float16Array(3 * h * w);
    return { data, input: new ort.Tensor("float16", data, [1, 3, h, w]) };
  }
  const why = type === "float16" ? "this browser has no Float16Array" : "the page feeds float32 or float16 only";
  throw new Error(`the file takes ${type} input and ${why}; export it without --fp16-io`);
}

// Warm-up: the first runs compile WebAssembly and plan memory; shown times are steady-state.
async function warmUp(session, feeds) {
  const start = performance.now();
  for (let i = 0; i < 50 && (i < 2 || performance.now() - start < WARMUP_MS); i++) {
    await session.run(feeds);
  }
}

async function selectModel(name, precision = null) {
  const entry = manifest.find((m) => m.name === name && m.available);
  if (!entry) {
    fail(`model ${name} is not available in this demo; choose one of the enabled models`);
    return;
  }
  const files = modelFiles(entry);
  const want = precision || (current?.entry.name === name ? null : params.get("precision")) || entry.precision || "fp32";
  const file = files.find((f) => f.precision === want) || files.find((f) => f.precision === (entry.precision || "fp32"));
  if (want && file.precision !== want) {
    showMessage(`${name} has no ${want} file here; showing ${file.precision}.`, "info");
  }
  setState("loading");
  $("model").value = name;
  fillPrecisions(entry, file.precision);
  $("model").disabled = true;
  $("precision").disabled = true;
  const mb = file.bytes ? ` (${(file.bytes / 1e6).toFixed(1)} MB)` : "";
  showMessage(`Loading ${name} ${file.precision}${mb}…`, "info");
  const key = `${name}/${file.precision}`;
  try {
    let loaded = sessions.get(key);
    if (!loaded) {
      const session = await createSession(entry, file);
      const [h, w] = entry.input_size.slice(1);
      const { data, input } = inputTensor(session, h, w); // reused for every image of this session
      await warmUp(session, { [session.inputNames[0]]: input });
      loaded = { session, input, data };
      sessions.set(key, loaded);
    }
    current = { entry, file, ...loaded };
  } catch (err) {
    $("model").disabled = false;
    $("precision").disabled = false;
    if (current) { // the model that worked stays selected and usable
      $("model").value = current.entry.name;
      fillPrecisions(current.entry, current.file.precision);
    }
    fail(`${name} ${file.precision} (${file.file}) could not be loaded (${err.message}); choose another model or ` +
         "precision, or re-export it by restarting `aperture demo`");
    return;
  }
  $("model").disabled = false;
  $("precision").disabled = false;
  demo.model = name;
  demo.precision = file.precision;
  demo.ep = ep;
  demo.threads = ep === "wasm" ? threads : null;
  $("runtime").textContent = runtimeLabel();
  clearMessage();
  setState("ready");
  if (lastInput) await classify(lastInput.blob, lastInput.name, lastInput.trueLabel);
}

let gl = null; // a WebGL context, only to read decoded pixels back exactly (false: none)

// The decoded RGBA bytes exactly as stored, alpha not premultiplied, or null without WebGL.
// A 2D canvas would premultiply alpha and lose the colour of translucent pixels.
function readPixelsExact(bitmap) {
  if (gl === null) {
    const canvas = new OffscreenCanvas(1, 1);
    gl = canvas.getContext("webgl2") || canvas.getContext("webgl") || false;
  }
  if (!gl) return null;
  const max = gl.getParameter(gl.MAX_TEXTURE_SIZE);
  if (bitmap.width > max || bitmap.height > max) return null;
  const texture = gl.createTexture();
  const framebuffer = gl.createFramebuffer();
  try {
    gl.bindTexture(gl.TEXTURE_2D, texture);
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
    gl.bindFramebuffer(gl.FRAMEBUFFER, framebuffer);
    gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, texture, 0);
    if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) return null;
    const rgba = new Uint8Array(bitmap.width * bitmap.height * 4);
    gl.readPixels(0, 0, bitmap.width, bitmap.height, gl.RGBA, gl.UNSIGNED_BYTE, rgba);
    return gl.getError() === gl.NO_ERROR ? rgba : null;
  } finally {
    gl.bindFramebuffer(gl.FRAMEBUFFER, null);
    gl.deleteFramebuffer(framebuffer);
    gl.deleteTexture(texture);
  }
}

async function decode(blob) {
  // colorSpaceConversion "none": pixels as stored (Pillow applies no ICC profile either); the
  // browser turns the image upright by its EXIF orientation, as load_image does.
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const { width, height } = bitmap;
  try {
    if (width * height > MAX_PIXELS) {
      throw new Error(`${width}×${height} is too large for this page; pick an image under 64 megapixels`);
    }
    const exact = readPixelsExact(bitmap);
    if (exact) return { width, height, rgba: exact, exact: true };
    const canvas = new OffscreenCanvas(width, height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    return { width, height, rgba: ctx.getImageData(0, 0, width, height).data, exact: false };
  } finally {
    bitmap.close();
  }
}

async function classify(blob, name, trueLabel = null) {
  if (!current) {
    fail("no model is loaded yet; wait for the model menu, or reload the page");
    return null;
  }
  setState("busy");
  clearMessage();
  const tStart = performance.now();
  let image;
  try {
    image = await decode(blob);
  } catch (err) {
    const why = err.name === "InvalidStateError" || err.name === "EncodingError" ? "the browser cannot decode it" : err.message;
    fail(`"${name}" is not an image this page can read (${why}); choose a PNG, JPEG, GIF, BMP or WebP file`);
    return null;
  }
  lastInput = { blob, name, trueLabel };
  const t1 = performance.now();
  const { entry, file, session, input, data } = current;
  const [h, w] = entry.input_size.slice(1);
  const notices = [];
  if (hasTranslucency(image.rgba)) {
    notices.push(image.exact ? "alpha dropped (colours kept as stored)"
                             : "alpha dropped; without WebGL, colours under translucent pixels are approximate");
  }
  if (image.width !== w || image.height !== h) {
    notices.push(`resized ${image.width}×${image.height} to ${w}×${h} (the model's input)`);
  }
  const pixels = resizeBilinearRGB(rgbaToRgb(image.rgba), image.width, image.height, w, h);
  const t2 = performance.now();
  data.set(toPixelValues(pixels, w, h)); // into the session's input tensor
  const feeds = { [session.inputNames[0]]: input };
  let output;
  const times = [];
  try {
    const start = performance.now();
    for (let i = 0; i < BURST && (i < 3 || performance.now() - start < BURST_MS); i++) {
      const t0 = performance.now();
      output = await session.run(feeds);
      times.push(performance.now() - t0);
    }
  } catch (err) {
    fail(`inference failed (${err.message}); reload the page, or choose another model`);
    return null;
  }
  const t3 = performance.now();
  const ms = times[0];
  const sorted = [...times].sort((a, b) => a - b);
  const logits = Array.from(output[session.outputNames[0]].data);
  // The file's calibrated probabilities (its calibrator, computed in the graph); an older file without them: plain softmax.
  const hasProbs = session.outputNames.includes("probabilities");
  const probs = hasProbs ? Array.from(output.probabilities.data) : softmax(logits);
  const calibrated = hasProbs && file.calibrated !== false; // false: no temperature was known at export
  if (!hasProbs) notices.push("probabilities are uncalibrated (the file has no 'probabilities' output; re-export it)");
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  const top = order.map(([p, i]) => ({ label: entry.labels[i], index: i, probability: p }));
  const stages = { decode: t1 - tStart, preprocess: t2 - t1, inference: (t3 - t2) / times.length,
                   postprocess: performance.now() - t3 };
  demo.last = {
    source: name, model: entry.name, precision: file.precision, width: image.width, height: image.height,
    pixels: Array.from(pixels), logits, probs, calibrated, tta: !!file.tta, probability_label: probabilityLabel(file, calibrated), top, ms, best_ms: sorted[0],
    median_ms: sorted[sorted.length >> 1], runs: times.length, stages, ep, threads: ep === "wasm" ? threads : null,
    notices,
  };
  render(demo.last, trueLabel, pixels, w, h);
  demo.runs += 1;
  demo.error = null;
  setState("done");
  return demo.last;
}

function render(result, trueLabel, pixels, w, h) {
  $("result").hidden = false;
  const preview = $("preview");
  preview.width = w;
  preview.height = h;
  const rgba = new Uint8ClampedArray(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    rgba.set(pixels.subarray(i * 3, i * 3 + 3), i * 4);
    rgba[i * 4 + 3] = 255;
  }
  preview.getContext("2d").putImageData(new ImageData(rgba, w, h), 0, 0);
  const truth = trueLabel ? ` — true label: ${trueLabel}${trueLabel === result.top[0].label ? " ✓" : " ✗"}` : "";
  $("source").textContent = `${result.source}${truth} · ${result.probability_label}`;
  $("notices").textContent = result.notices.join("; ");
  const list = $("top");
  list.replaceChildren();
  for (const { label, probability } of result.top) {
    const li = document.createElement("li");
    li.dataset.label = label;
    li.dataset.probability = String(probability);
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(probability * 100).toFixed(2)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "p";
    pct.textContent = `${(probability * 100).toFixed(1)} %`;
    li.append(name, bar, pct);
    list.append(li);
  }
  $("timing").textContent = `Inference per image: best ${result.best_ms.toFixed(2)} ms, median ` +
    `${result.median_ms.toFixed(2)} ms over ${result.runs} runs · ${result.model} ${result.precision} · ${runtimeLabel()}`;
}

// Steady-state latency of the loaded model at batch 1, for `aperture bench --variants browser-*`.
async function benchmark(n = 50, maxMs = 20000, warm = true) {
  if (!current) throw new Error("no model loaded");
  const { entry, file, session, input, data } = current;
  const [h, w] = entry.input_size.slice(1);
  if (demo.last) data.set(toPixelValues(Uint8Array.from(demo.last.pixels), w, h));
  const feeds = { [session.inputNames[0]]: input };
  if (warm) await warmUp(session, feeds);
  const times = [];
  const start = performance.now();
  for (let i = 0; i < n && (i < 3 || performance.now() - start < maxMs); i++) {
    const t0 = performance.now();
    await session.run(feeds);
    times.push(performance.now() - t0);
  }
  n = times.length;
  times.sort((a, b) => a - b);
  return { adapter: ep === "webgpu" ? demo.adapter : null, model: entry.name, precision: file.precision, ep, threads: ep === "wasm" ? threads : null,
           isolated: self.crossOriginIsolated === true, runs: n, median_ms: times[Math.floor(n / 2)],
           min_ms: times[0], mean_ms: times.reduce((a, b) => a + b, 0) / n, note: [epNote, threadNote].filter(Boolean).join("; ") };
}

async function loadGallery() {
  let items;
  try {
    const response = await fetch("gallery/gallery.json");
    items = (await response.json()).images;
  } catch {
    return; // the page works without it
  }
  const gallery = $("gallery");
  for (const item of items) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = item.label;
    button.dataset.file = item.file;
    const img = document.createElement("img");
    img.src = `gallery/${item.file}`;
    img.alt = `CIFAR-10 test image of a ${item.label}`;
    button.append(img);
    button.addEventListener("click", async () => {
      const blob = await (await fetch(`gallery/${item.file}`)).blob();
      demo.classify(blob, `gallery/${item.file}`, item.label);
    });
    gallery.append(button);
  }
}

function wireInputs() {
  const input = $("file");
  input.addEventListener("change", () => {
    const file = input.files[0];
    if (file) demo.classify(file, file.name);
    input.value = ""; // the same file can be chosen again
  });
  const drop = $("drop");
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") input.click();
  });
  for (const type of ["dragenter", "dragover"]) {
    window.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    window.addEventListener(type, () => drop.classList.remove("over"));
  }
  window.addEventListener("drop", (e) => {
    e.preventDefault(); // a dropped file is classified, not opened in place of the page
    const file = e.dataTransfer?.files?.[0];
    if (file) demo.classify(file, file.name);
  });
}

async function main() {
  wireInputs();
  const gallery = loadGallery();
  try {
    await loadRuntime();
    const first = await loadManifest();
    await gallery;
    await demo.selectModel(first);
  } catch (err) {
    fail(err.message);
  }
}

main();
