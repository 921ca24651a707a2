// DeepAge web page: upload a photo to POST /predict, draw the faces and ages on a canvas, and chart the
// age-group probabilities of the selected face with plain HTML bars. No libraries, no external requests.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const els = {
    file: $("file"), drop: $("drop"), detect: $("detect"), status: $("status"), model: $("model"),
    result: $("result"), canvas: $("canvas"), caption: $("caption"), faces: $("faces"),
    age: $("age"), range: $("range"), meta: $("meta"), charts: $("charts"), timing: $("timing"),
    decision: $("decision"),
  };
  const DECISION_TEXT = { adult: "adult", minor: "minor", unsure: "unsure: could be either" };
  const SCHEME_TITLES = { utk14: "14 age groups", utk8: "8 age groups" };
  const COLORS = { selected: "#f5a300", other: "#2f8fd6", labelInk: "#1d1500", otherInk: "#ffffff" };

  // State shared with tests: the last response, the selected face, the boxes in canvas pixels.
  const state = { result: null, selected: 0, boxes: [], image: null, imageUrl: null, maxUploadBytes: null };
  window.deepage = state;

  function setState(name, message) {
    document.body.dataset.state = name;
    els.status.textContent = message || "";
  }

  // After an error nothing of the previous photo may stay on screen: its ages would read as this file's.
  function clearResult() {
    state.result = null;
    state.image = null;
    state.boxes = [];
    state.selected = 0;
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = null;
    els.result.hidden = true;
    els.canvas.getContext("2d").clearRect(0, 0, els.canvas.width, els.canvas.height);
    for (const el of [els.faces, els.charts]) el.replaceChildren();
    for (const el of [els.caption, els.age, els.range, els.meta, els.timing, els.decision]) el.textContent = "";
    els.decision.hidden = true;
  }

  function fail(message) {
    clearResult();
    setState("error", message);
  }

  async function loadHealth() {
    try {
      const r = await fetch("healthz");
      const h = await r.json();
      const m = h.model || {};
      els.model.textContent = "model: " + (m.model ? `${m.model} (${m.model_file})` : String(m.model_file));
      els.model.title = `DeepAge ${h.version}` + (m.backend ? `, ${m.backend} backend` : "");
      state.maxUploadBytes = h.max_upload_bytes || null;
    } catch (e) {
      els.model.textContent = "model: (server not answering)";
    }
  }

  function loadImage(file) {
    return new Promise((resolve, reject) => {
      if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
      state.imageUrl = URL.createObjectURL(file);
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the browser cannot show this file as an image"));
      img.src = state.imageUrl;
    });
  }

  async function submit(file) {
    if (!file) return;
    if (state.maxUploadBytes && file.size > state.maxUploadBytes) {
      fail(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ` +
        `${(state.maxUploadBytes / 1048576).toFixed(0)} MB`);
      return;
    }
    setState("busy", `Estimating ages in ${file.name}…`);
    const body = new FormData();
    body.append("file", file, file.name);
    let response, payload;
    try {
      response = await fetch(`predict?detect=${els.detect.checked}`, { method: "POST", body });
      payload = await response.json().catch(() => ({ error: `HTTP ${response.status} ${response.statusText}` }));
    } catch (e) {
      fail("Could not reach the server: " + e.message);
      return;
    }
    if (!response.ok) {
      fail(`${payload.error || "request failed"} (HTTP ${response.status})`);
      return;
    }
    let img = null;
    try {
      img = await loadImage(file);
    } catch (e) {
      img = null;  // e.g. TIFF: the server read it, the browser cannot show it; boxes go on a grey canvas
    }
    state.result = payload;
    state.image = img;
    state.selected = 0;
    render();
    const n = payload.faces.length;
    setState("done", n === 0
      ? "No face found. If the photo is a close crop of one face, untick \u201cfind faces\u201d and try again."
      : `${n} face${n === 1 ? "" : "s"} found in ${payload.filename}.`);
  }

  function render() {
    drawCanvas();
    renderFaceButtons();
    renderDetails();
  }

  function drawCanvas() {
    const r = state.result;
    const canvas = els.canvas;
    // Work in the server's pixel grid (orientation already applied there), capped for very large photos.
    const scale = Math.min(1, 1600 / Math.max(r.width, r.height));
    canvas.width = Math.max(1, Math.round(r.width * scale));
    canvas.height = Math.max(1, Math.round(r.height * scale));
    const ctx = canvas.getContext("2d");
    if (state.image) {
      ctx.drawImage(state.image, 0, 0, canvas.width, canvas.height);
    } else {
      ctx.fillStyle = "#c9ced6";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }
    const lw = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 250));
    const font = Math.max(13, Math.round(Math.max(canvas.width, canvas.height) / 28));
    state.boxes = r.faces.map((f) => f.box.map((v) => v * scale));
    // Draw the selected face last, so that it is on top where boxes overlap.
    const order = r.faces.map((_, i) => i).filter((i) => i !== state.selected);
    if (r.faces.length) order.push(state.selected);
    for (const i of order) {
      const [x0, y0, x1, y1] = state.boxes[i];
      const selected = i === state.selected;
      const color = selected ? COLORS.selected : COLORS.other;
      ctx.lineWidth = lw;
      ctx.strokeStyle = color;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      const text = ageText(r.faces[i]);
      ctx.font = `700 ${font}px system-ui, sans-serif`;
      const pad = Math.round(font * 0.3);
      const tw = ctx.measureText(text).width + 2 * pad;
      const th = font + pad;
      const ty = y0 - th >= 0 ? y0 - th : y1;  // above the box, or below it at the top edge
      const tx = Math.min(Math.max(0, x0 - lw / 2), canvas.width - tw);
      ctx.fillStyle = color;
      ctx.fillRect(tx, ty, tw, th);
      ctx.fillStyle = selected ? COLORS.labelInk : COLORS.otherInk;
      ctx.textBaseline = "middle";
      ctx.fillText(text, tx + pad, ty + th / 2 + 1);
    }
    els.caption.textContent = `${r.filename}: ${r.width}\u00d7${r.height} px` +
      (r.faces.length > 1 ? " \u00b7 click a face to see its details" : "");
  }

  function renderFaceButtons() {
    const faces = state.result.faces;
    els.faces.replaceChildren();
    if (faces.length < 2) return;
    faces.forEach((f, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.setAttribute("role", "tab");
      b.setAttribute("aria-selected", String(i === state.selected));
      b.textContent = `face ${i + 1} \u00b7 ${ageText(f)}`;
      b.addEventListener("click", () => select(i));
      els.faces.appendChild(b);
    });
  }

  function renderDetails() {
    const r = state.result;
    els.charts.replaceChildren();
    els.result.hidden = false;
    if (!r.faces.length) {
      els.decision.hidden = true;
      els.age.textContent = "\u2013";
      els.range.textContent = "";
      els.meta.innerHTML = '<span class="empty">no face found</span>';
      els.timing.textContent = timingText(r.timing);
      return;
    }
    const f = r.faces[state.selected];
    els.age.textContent = ageText(f);
    els.range.textContent = f.age_low === null || f.age_low === undefined ? ""
      : `likely between ${Math.round(f.age_low)} and ${Math.round(f.age_high)} years`;
    renderDecision(f);
    const meta = [`face ${state.selected + 1} of ${r.faces.length}`];
    if (f.detection_score !== null && f.detection_score !== undefined) {
      meta.push(`detection score ${Number(f.detection_score).toFixed(2)}`);
    }
    els.meta.textContent = meta.join(" \u00b7 ");
    const names = Object.keys(f.groups || {});
    names.sort((a, b) => rank(a) - rank(b));
    for (const name of names) els.charts.appendChild(chart(name, f.groups[name]));
    els.timing.textContent = timingText(r.timing);
  }

  // The minor/adult check, when the model carries an operating point (p_adult and decision in the answer).
  function renderDecision(f) {
    const has = f.decision !== null && f.decision !== undefined;
    els.decision.hidden = !has;
    els.decision.dataset.decision = has ? f.decision : "";
    els.decision.textContent = has ? `${DECISION_TEXT[f.decision] || f.decision} \u00b7 ` +
      `P(age \u2265 ${f.adult_age}) ${(100 * f.p_adult).toFixed(0)}%` : "";
  }

  // The age in whole years; a model with a class head gives no age, so show its most likely age group.
  function ageText(face) {
    if (face.age !== null && face.age !== undefined) return String(Math.round(face.age));
    const groups = face.groups || {};
    const name = Object.keys(groups).sort((a, b) => rank(a) - rank(b))[0];
    return name ? groups[name].label : "?";
  }

  function rank(scheme) {
    const i = ["utk14", "utk8"].indexOf(scheme);
    return i < 0 ? 99 : i;
  }

  function chart(name, group) {
    const box = document.createElement("section");
    box.className = "chart";
    box.dataset.scheme = name;
    const h = document.createElement("h2");
    h.textContent = SCHEME_TITLES[name] || `${Object.keys(group.probabilities).length} groups`;
    const small = document.createElement("small");
    small.textContent = ` (${name}) \u00b7 most likely ${group.label}, ${(100 * group.probability).toFixed(0)}%`;
    h.appendChild(small);
    box.appendChild(h);
    for (const [label, p] of Object.entries(group.probabilities)) {
      const row = document.createElement("div");
      row.className = "row" + (label === group.label ? " top" : "");
      const l = document.createElement("span");
      l.className = "label";
      l.textContent = label;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.display = "block";
      fill.style.width = `${(100 * Math.max(0, Math.min(1, p))).toFixed(1)}%`;
      track.appendChild(fill);
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = `${(100 * p).toFixed(p < 0.1 ? 1 : 0)}%`;
      row.append(l, track, pct);
      box.appendChild(row);
    }
    return box;
  }

  function timingText(t) {
    if (!t) return "";
    return `server time ${t.total_ms.toFixed(0)} ms (model ${t.inference_ms.toFixed(0)} ms, ` +
      `waiting ${t.queue_ms.toFixed(0)} ms)`;
  }

  function select(i) {
    state.selected = i;
    render();
  }

  // Clicking on the photo selects the smallest box under the pointer.
  els.canvas.addEventListener("click", (ev) => {
    if (!state.result) return;
    const rect = els.canvas.getBoundingClientRect();
    const x = (ev.clientX - rect.left) * (els.canvas.width / rect.width);
    const y = (ev.clientY - rect.top) * (els.canvas.height / rect.height);
    let best = -1, bestArea = Infinity;
    state.boxes.forEach(([x0, y0, x1, y1], i) => {
      const area = (x1 - x0) * (y1 - y0);
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && area < bestArea) { best = i; bestArea = area; }
    });
    if (best >= 0 && best !== state.selected) select(best);
  });

  els.file.addEventListener("change", () => submit(els.file.files[0]));
  els.detect.addEventListener("change", () => { if (els.file.files[0]) submit(els.file.files[0]); });
  for (const type of ["dragenter", "dragover"]) {
    els.drop.addEventListener(type, (ev) => { ev.preventDefault(); els.drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    els.drop.addEventListener(type, () => els.drop.classList.remove("over"));
  }
  els.drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const file = ev.dataTransfer.files[0];
    if (!file) return;
    const dt = new DataTransfer();
    dt.items.add(file);
    els.file.files = dt.files;
    submit(file);
  });

  loadHealth();
})();
