/* aelab's latent explorer: the run's decoder in plain JavaScript (aelab.explorer writes its layers and
   weights), and a pad, sliders and a label picker to decode any point of the latent space. */
"use strict";

function aelabFloat16(bits) {  /* Uint16Array of IEEE half floats -> Float32Array */
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
    table[h] = exponent === 0 ? sign * Math.pow(2, -14) * (fraction / 1024)
      : exponent === 31 ? (fraction ? NaN : sign * Infinity)
      : sign * Math.pow(2, exponent - 15) * (1 + fraction / 1024);
  }
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
  return out;
}

function aelabDecoder(spec) {
  function bytesOf(text) {
    const raw = atob(text), bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes.buffer;
  }
  /* float32, float16, or mixed: float16 with the segments [start, length] of spec.float32 written over it */
  const W = spec.dtype === "float32" ? new Float32Array(bytesOf(spec.weights)) : aelabFloat16(new Uint16Array(bytesOf(spec.weights)));
  if (spec.dtype === "mixed") {
    const kept = new Float32Array(bytesOf(spec.float32));
    let at = 0;
    for (const [start, length] of spec.segments) { W.set(kept.subarray(at, at + length), start); at += length; }
  }

  function linear(x, L) {
    const out = new Float32Array(L.out), n = L.in;
    for (let j = 0; j < L.out; j++) {
      let sum = W[L.b + j];
      const row = L.w + j * n;
      for (let i = 0; i < n; i++) sum += W[row + i] * x[i];
      out[j] = sum;
    }
    return out;
  }

  function conv3x3(t, L) {  /* the deep decoder's: 3x3, stride 1, padding 1, on a zero-bordered copy, nine taps a pass */
    const H = t.h, Wd = t.w, P = Wd + 2, x = t.data, padded = new Float32Array(t.c * (H + 2) * P);
    for (let c = 0; c < t.c; c++)
      for (let y = 0; y < H; y++) padded.set(x.subarray((c * H + y) * Wd, (c * H + y + 1) * Wd), (c * (H + 2) + y + 1) * P + 1);
    const out = new Float32Array(L.cout * H * Wd);
    for (let co = 0; co < L.cout; co++) {
      const plane = co * H * Wd, bias = W[L.b + co];
      for (let i = 0; i < H * Wd; i++) out[plane + i] = bias;
      for (let ci = 0; ci < L.cin; ci++) {
        const w = L.w + (co * L.cin + ci) * 9;
        const w0 = W[w], w1 = W[w + 1], w2 = W[w + 2], w3 = W[w + 3], w4 = W[w + 4], w5 = W[w + 5], w6 = W[w + 6],
          w7 = W[w + 7], w8 = W[w + 8];
        const base = ci * (H + 2) * P;
        for (let y = 0; y < H; y++) {
          const a = base + y * P, b = a + P, c = b + P, o = plane + y * Wd;
          for (let xx = 0; xx < Wd; xx++) {
            out[o + xx] += w0 * padded[a + xx] + w1 * padded[a + xx + 1] + w2 * padded[a + xx + 2]
              + w3 * padded[b + xx] + w4 * padded[b + xx + 1] + w5 * padded[b + xx + 2]
              + w6 * padded[c + xx] + w7 * padded[c + xx + 1] + w8 * padded[c + xx + 2];
          }
        }
      }
    }
    return {data: out, c: L.cout, h: H, w: Wd};
  }

  /* a convolution [C, H, W] -> [cout, OH, OW] (output pixel oy reads input oy * s - p + ky) or a transposed one
     (input pixel iy writes output iy * s - p + ky): one loop over the side that is read or written row by row */
  function convolve(t, L, transposed) {
    if (!transposed && L.k === 3 && L.stride[0] === 1 && L.stride[1] === 1 && L.pad[0] === 1 && L.pad[1] === 1) {
      return conv3x3(t, L);
    }
    const k = L.k, sy = L.stride[0], sx = L.stride[1], py = L.pad[0], px = L.pad[1], H = t.h, Wd = t.w;
    const OH = transposed ? (H - 1) * sy - 2 * py + k + L.outpad[0] : Math.floor((H + 2 * py - k) / sy) + 1;
    const OW = transposed ? (Wd - 1) * sx - 2 * px + k + L.outpad[1] : Math.floor((Wd + 2 * px - k) / sx) + 1;
    const x = t.data, out = new Float32Array(L.cout * OH * OW);
    const rows = transposed ? H : OH, cols = transposed ? Wd : OW, otherRows = transposed ? OH : H, otherCols = transposed ? OW : Wd;
    for (let co = 0; co < L.cout; co++) {
      const plane = co * OH * OW, bias = W[L.b + co];
      for (let i = 0; i < OH * OW; i++) out[plane + i] = bias;
      for (let ci = 0; ci < L.cin; ci++) {
        const taps = L.w + (transposed ? ci * L.cout + co : co * L.cin + ci) * k * k;
        for (let ky = 0; ky < k; ky++) {
          for (let kx = 0; kx < k; kx++) {
            const wv = W[taps + ky * k + kx];
            if (wv === 0) continue;
            /* the columns a whose other side a * sx - px + kx lies inside */
            const first = Math.max(0, Math.ceil((px - kx) / sx)), last = Math.min(cols - 1, Math.floor((otherCols - 1 + px - kx) / sx));
            for (let a = 0; a < rows; a++) {
              const b = a * sy - py + ky;
              if (b < 0 || b >= otherRows) continue;
              if (transposed) {
                const o = plane + b * OW - px + kx, r = (ci * H + a) * Wd;
                for (let ix = first; ix <= last; ix++) out[o + ix * sx] += wv * x[r + ix];
              } else {
                const o = plane + a * OW, r = (ci * H + b) * Wd - px + kx;
                for (let ox = first; ox <= last; ox++) out[o + ox] += wv * x[r + ox * sx];
              }
            }
          }
        }
      }
    }
    return {data: out, c: L.cout, h: OH, w: OW};
  }

  function nearest(o, inSize, outSize) {  /* PyTorch's nearest index (float32 arithmetic) */
    if (outSize === inSize) return o;
    if (outSize === 2 * inSize) return o >> 1;
    const scale = Math.fround(inSize / outSize);
    return Math.min(Math.floor(Math.fround(o * scale)), inSize - 1);
  }

  function resize(t, L) {
    const OH = L.size[0], OW = L.size[1], out = new Float32Array(t.c * OH * OW), x = t.data;
    const cols = new Int32Array(OW);
    for (let ox = 0; ox < OW; ox++) cols[ox] = nearest(ox, t.w, OW);
    for (let c = 0; c < t.c; c++) {
      for (let oy = 0; oy < OH; oy++) {
        const r = (c * t.h + nearest(oy, t.h, OH)) * t.w, o = (c * OH + oy) * OW;
        for (let ox = 0; ox < OW; ox++) out[o + ox] = x[r + cols[ox]];
      }
    }
    return {data: out, c: t.c, h: OH, w: OW};
  }

  function relu(t) {
    const x = t.data || t, out = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) out[i] = x[i] > 0 ? x[i] : 0;
    return t.data ? {data: out, c: t.c, h: t.h, w: t.w} : out;
  }

  function run(t, layers) {
    for (const L of layers) {
      if (L.op === "linear") t = linear(t, L);
      else if (L.op === "relu") t = relu(t);
      else if (L.op === "reshape") t = {data: t, c: L.shape[0], h: L.shape[1], w: L.shape[2]};
      else if (L.op === "conv") t = convolve(t, L, false);
      else if (L.op === "convT") t = convolve(t, L, true);
      else if (L.op === "resize") t = resize(t, L);
      else if (L.op === "residual") {
        const body = run(t, L.body), out = new Float32Array(body.data.length);
        for (let i = 0; i < out.length; i++) { const v = t.data[i] + body.data[i]; out[i] = v > 0 ? v : 0; }
        t = {data: out, c: body.c, h: body.h, w: body.w};
      } else throw new Error("unknown layer " + L.op);
    }
    return t;
  }

  /* code: numbers [latent_dim]; label: a conditional model's class. Returns the image's pixels in [0, 1],
     channels x height x width. */
  return function decode(code, label) {
    if (!code || code.length !== spec.latent_dim) {
      throw new RangeError("aelabDecode: a code is " + spec.latent_dim + " numbers, got " + (code ? code.length : code));
    }
    for (let i = 0; i < spec.latent_dim; i++) {
      if (!isFinite(code[i])) throw new RangeError("aelabDecode: the code's number " + i + " is " + code[i] + ", not a finite number");
    }
    if (spec.classes && (label !== undefined && label !== null)
        && !(Number.isInteger(label) && label >= 0 && label < spec.classes)) {
      throw new RangeError("aelabDecode: the label is a class from 0 to " + (spec.classes - 1) + ", got " + label);
    }
    const input = new Float32Array(spec.inputs);
    for (let i = 0; i < spec.latent_dim; i++) input[i] = code[i];
    if (spec.classes) input[spec.latent_dim + (label || 0)] = 1;
    const out = run(input, spec.layers).data;
    for (let i = 0; i < out.length; i++) out[i] = 1 / (1 + Math.exp(-out[i]));
    return out;
  };
}

const AELAB_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];

function aelabExplorer(root, data) {
  const spec = data.decoder, decode = aelabDecoder(spec);
  window.aelabDecode = function (code, label) { return decode(code, label === undefined ? currentLabel() : label); };
  const d = spec.latent_dim, [C, H, Wd] = spec.image;
  const raw = atob(data.codes), bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  const codes = new Float32Array(bytes.buffer), n = data.labels.length;
  const plane = data.plane, S = data.sliders;
  const pad = root.querySelector(".pad"), view = root.querySelector(".decoded"), sliders = root.querySelector(".sliders");
  const picker = root.querySelector(".label-picker"), readout = root.querySelector(".readout");
  const ctx = pad.getContext("2d"), size = pad.width;
  let code = Float32Array.from(data.start);

  function coordinates(z, offset) {  /* the point's place in the plane: (z - origin) . a, (z - origin) . b */
    let u = 0, v = 0;
    for (let i = 0; i < d; i++) { const c = z[(offset || 0) + i] - plane.origin[i]; u += c * plane.a[i]; v += c * plane.b[i]; }
    return [u, v];
  }
  const ra = plane.range_a, rb = plane.range_b;
  function toPad(u, v) { return [(u - ra[0]) / (ra[1] - ra[0]) * size, (1 - (v - rb[0]) / (rb[1] - rb[0])) * size]; }
  function fromPad(x, y) { return [ra[0] + x / size * (ra[1] - ra[0]), rb[0] + (1 - y / size) * (rb[1] - rb[0])]; }
  const points = [];
  for (let j = 0; j < n; j++) points.push(toPad.apply(null, coordinates(codes, j * d)));

  function axes() {  /* the pad's ticks and axis names (the plane's coordinates), and a legend of its colours */
    const box = root.querySelector(".padbox");
    if (!box) return;
    const left = pad.offsetLeft, top = pad.offsetTop;
    function put(className, text, x, y) {
      const label = document.createElement("span");
      label.className = className; label.textContent = text;
      if (x !== null) label.style.left = (left + x) + "px";
      if (y !== null) label.style.top = (top + y) + "px";
      box.appendChild(label);
    }
    for (let k = 0; k <= 4; k++) {
      const f = k / 4;
      put("tick x", (ra[0] + f * (ra[1] - ra[0])).toFixed(2), f * pad.clientWidth, null);
      put("tick y", (rb[1] - f * (rb[1] - rb[0])).toFixed(2), null, f * pad.clientHeight);
    }
    put("axis x", plane.names[0], null, null); put("axis y", plane.names[1], null, null);
    const legend = root.querySelector(".legend"), seen = Array.from(new Set(data.labels)).sort(function (a, b) { return a - b; });
    if (!legend) return;
    seen.forEach(function (label) {
      const item = document.createElement("span"), swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = label >= 0 ? AELAB_COLOURS[label % AELAB_COLOURS.length] : "#888";
      item.className = "entry"; item.appendChild(swatch);
      item.appendChild(document.createTextNode(label >= 0 ? (data.class_names[label] || String(label)) : "unlabelled"));
      legend.appendChild(item);
    });
  }
  axes();

  function currentLabel() { return picker && picker.value !== "" ? Number(picker.value) : 0; }

  function drawPad() {
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, size, size);
    for (let j = 0; j < n; j++) {
      const label = data.labels[j];
      ctx.fillStyle = label >= 0 ? AELAB_COLOURS[label % AELAB_COLOURS.length] : "#888";
      ctx.globalAlpha = 0.55; ctx.fillRect(points[j][0] - 1.5, points[j][1] - 1.5, 3, 3);
    }
    ctx.globalAlpha = 1;
    const [x, y] = toPad.apply(null, coordinates(code));
    ctx.strokeStyle = "#1d2433"; ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.moveTo(x - 9, y); ctx.lineTo(x + 9, y); ctx.moveTo(x, y - 9); ctx.lineTo(x, y + 9); ctx.stroke();
    ctx.beginPath(); ctx.arc(x, y, 5, 0, 2 * Math.PI); ctx.stroke();
  }

  const image = view.getContext("2d"), pixels = image.createImageData(Wd, H);
  let pending = false;
  function update() {  /* at most one decode a frame, however many pointer events arrive */
    if (!pending) { pending = true; window.requestAnimationFrame(function () { pending = false; show(); }); }
  }
  function show() {
    const out = decode(code, currentLabel()), plane2 = H * Wd;
    for (let p = 0; p < plane2; p++) {
      for (let c = 0; c < 3; c++) pixels.data[4 * p + c] = Math.round(255 * out[(C === 3 ? c : 0) * plane2 + p]);  /* (not 3: the first, grey) */
      pixels.data[4 * p + 3] = 255;
    }
    image.putImageData(pixels, 0, 0);
    drawPad();
    for (let k = 0; k < inputs.length; k++) {
      const value = along(k);
      inputs[k].value = String(value); labels[k].textContent = value.toFixed(2) + (S.unit ? " " + S.unit : "");
    }
    const [u, v] = coordinates(code);
    readout.textContent = plane.names[0] + " " + u.toFixed(2) + ", " + plane.names[1] + " " + v.toFixed(2);
  }

  function along(k) {  /* the code's value along slider k's direction */
    let s = 0;
    for (let i = 0; i < d; i++) s += S.basis[k][i] * (code[i] - (S.centre ? S.centre[i] : 0));
    return s;
  }
  function setAlong(k, value) {
    const change = value - along(k);
    for (let i = 0; i < d; i++) code[i] += change * S.basis[k][i];
  }
  function moveTo(u, v) {  /* the code's place in the plane set to (u, v); the rest of it kept */
    const [u0, v0] = coordinates(code);
    for (let i = 0; i < d; i++) code[i] += (u - u0) * plane.a[i] + (v - v0) * plane.b[i];
  }

  const inputs = [], labels = [];
  S.names.forEach(function (name, k) {
    const row = document.createElement("label"), input = document.createElement("input"), value = document.createElement("span");
    input.type = "range"; input.min = String(S.low[k]); input.max = String(S.high[k]);
    input.step = String((S.high[k] - S.low[k]) / 200);
    row.textContent = name + " "; row.appendChild(input); row.appendChild(value);
    input.addEventListener("input", function () { setAlong(k, Number(input.value)); update(); });
    sliders.appendChild(row); inputs.push(input); labels.push(value);
  });
  if (picker) {
    if (spec.classes) {
      for (let c = 0; c < spec.classes; c++) {
        const option = document.createElement("option");
        option.value = String(c); option.textContent = data.class_names[c] || String(c); picker.appendChild(option);
      }
      if (data.labels.length && data.labels[0] >= 0) picker.value = String(data.labels[0]);  /* the first image's */
      picker.addEventListener("change", show);
    } else picker.parentElement.style.display = "none";
  }

  let dragging = false;
  function pointer(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * size / box.width, (event.clientY - box.top) * size / box.height];
  }
  pad.addEventListener("pointerdown", function (event) {
    const [x, y] = pointer(event);
    let best = -1, distance = 64;  /* a test image's point within 8 pixels: load its code */
    for (let j = 0; j < n; j++) {
      const dx = points[j][0] - x, dy = points[j][1] - y;
      if (dx * dx + dy * dy < distance) { distance = dx * dx + dy * dy; best = j; }
    }
    if (best >= 0) {
      code = codes.slice(best * d, best * d + d);
      if (picker && spec.classes && data.labels[best] >= 0) picker.value = String(data.labels[best]);
    } else moveTo.apply(null, fromPad(x, y));
    dragging = true; pad.focus(); show();
    if (pad.setPointerCapture && event.pointerId !== undefined) {
      try { pad.setPointerCapture(event.pointerId); } catch (e) { /* a synthetic event has no pointer to capture */ }
    }
  });
  const follow = root.querySelector(".follow");  /* checked: the point follows the pointer without a click */
  pad.addEventListener("pointermove", function (event) {
    if (!dragging && !(follow && follow.checked && event.pointerType === "mouse")) return;
    const [x, y] = pointer(event);
    moveTo.apply(null, fromPad(Math.min(size, Math.max(0, x)), Math.min(size, Math.max(0, y)))); update();
  });
  window.addEventListener("pointerup", function () { dragging = false; });
  pad.addEventListener("keydown", function (event) {
    const steps = {ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, 1], ArrowDown: [0, -1]}[event.key];
    if (!steps) return;
    event.preventDefault();
    const [u, v] = coordinates(code);
    moveTo(u + steps[0] * (ra[1] - ra[0]) / 50, v + steps[1] * (rb[1] - rb[0]) / 50); show();
  });
  window.aelabExplorerCode = function () { return Array.from(code); };  /* the code shown (for tests and other pages) */
  show();
  root.dataset.ready = "yes";
  return {decode: decode};
}
