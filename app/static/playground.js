// The playground: calls only the public API (/info, /perplexity, /next-word,
// /generate_stream) and inserts every model output and user text as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const BITS = Math.LN2;
const MAX_BITS = 20;
// viridis (perceptually uniform, readable with colour-blindness), 0 -> 20 bits
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89",
  "#35b779", "#6ece58", "#b5de2b", "#fde725"].reverse();

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function colour(bits) {
  const x = Math.min(Math.max(bits / MAX_BITS, 0), 1) * (VIRIDIS.length - 1);
  return VIRIDIS[Math.round(x)];
}

function darkText(hex) {
  const n = parseInt(hex.slice(1), 16);
  const lum = 0.2126 * (n >> 16) + 0.7152 * ((n >> 8) & 255) + 0.0722 * (n & 255);
  return lum > 140;
}

async function api(path, body, signal) {
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body), signal,
  };
  const r = await fetch(path, init);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function fmt(x, digits) {
  return x === null || x === undefined ? "n/a" : Number(x).toFixed(digits);
}

// ------------------------------------------------------------------ the model
async function showModel() {
  const facts = $("model-facts");
  try {
    const info = await api("/info");
    facts.replaceChildren();
    const m = info.model;
    const rows = [
      ["name", info.weights.name],
      ["architecture", `${m.num_layers} x ${m.hidden_size} LSTM, ${m.tied ? "tied" : "untied"}` +
        ` embedding ${m.wordvec_size}`],
      ["vocabulary", `${m.vocab_size.toLocaleString("en")} tokens`],
      ["normaliser", `${m.normalizer.name}${m.normalizer.lowercase ? ", lower case" : ""}`],
    ];
    for (const [k, v] of Object.entries(info.metrics || {})) {
      if (typeof v === "number") rows.push([k.replaceAll("_", " "), fmt(v, 2)]);
    }
    for (const [k, v] of rows) {
      facts.append(el("dt", k), el("dd", String(v)));
    }
    facts.dataset.ready = "1";
  } catch (e) {
    $("model-status").textContent = `cannot read /info: ${e.message}`;
  }
}

// ------------------------------------------------------------------ scoring
function tokenInfo(t) {
  const panel = $("token-info");
  panel.replaceChildren();
  panel.append(el("strong", t.token), el("span",
    ` log-probability ${fmt(t.logprob, 4)} (p = ${fmt(Math.exp(t.logprob), 5)}), ` +
    `${fmt(-t.logprob / BITS, 2)} bits, rank ${t.rank}${t.oov ? ", out of vocabulary" : ""}`));
  const list = el("ol", undefined, "alternatives");
  for (const a of t.top) {
    list.append(el("li", `${a.token}  ${fmt(Math.exp(a.logprob), 4)}`));
  }
  panel.append(el("div", "The model's top alternatives here:"), list);
}

function showScore(box, text, result) {
  box.replaceChildren();
  const summary = el("p", undefined, "summary");
  summary.append(
    el("span", `perplexity ${fmt(result.perplexity, 2)}`, "ppl"),
    el("span", ` · log-probability ${fmt(result.log_prob, 3)}`, "logprob"),
    el("span", ` · ${result.num_tokens} tokens`, "ntokens"),
    el("span", result.num_oov ? ` · ${result.num_oov} OOV` : "", "noov"));
  const tokens = el("div", undefined, "tokens");
  for (const t of result.tokens) {
    const bits = -t.logprob / BITS;
    const span = el("span", undefined, "tok" + (t.oov ? " oov" : ""));
    span.tabIndex = 0;
    span.setAttribute("role", "button");
    span.setAttribute("aria-label", `${t.token}: ${fmt(bits, 1)} bits, rank ${t.rank}` +
      (t.oov ? ", out of vocabulary" : ""));
    const c = colour(bits);
    span.style.backgroundColor = c;
    span.style.color = darkText(c) ? "#000" : "#fff";
    span.append(el("span", t.token, "word"), el("span", fmt(bits, 1), "bits"));
    span.addEventListener("mouseenter", () => tokenInfo(t));
    span.addEventListener("focus", () => tokenInfo(t));
    tokens.append(span);
  }
  box.append(el("p", text, "scored-text"), summary, tokens);
}

async function score(ev) {
  ev.preventDefault();
  const texts = [$("text-a").value, $("text-b").value];
  const boxes = [$("result-a"), $("result-b")];
  const button = $("score-button");
  button.disabled = true;
  try {
    for (let i = 0; i < 2; i++) {
      boxes[i].replaceChildren();
      if (!texts[i].trim()) continue;
      try {
        const r = await api("/perplexity", {text: texts[i], return_tokens: true, top_k: 5});
        showScore(boxes[i], texts[i], r.results[0]);
      } catch (e) {
        boxes[i].append(el("p", e.message, "error"));
      }
    }
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ next word
async function predict(ev) {
  if (ev) ev.preventDefault();
  const bars = $("bars");
  try {
    const r = await api("/next-word", {context: $("context").value, top_k: 10});
    bars.replaceChildren();
    const best = r.predictions.length ? r.predictions[0].prob : 1;
    for (const p of r.predictions) {
      const li = el("li");
      const b = el("button", undefined, "bar");
      b.type = "button";
      b.setAttribute("aria-label", `append ${p.token}, probability ${fmt(p.prob, 4)}`);
      const fill = el("span", undefined, "fill");
      fill.style.width = `${Math.max(2, 100 * p.prob / best)}%`;
      b.append(fill, el("span", p.token, "label"), el("span", fmt(p.prob, 4), "prob"));
      b.addEventListener("click", () => {
        const c = $("context");
        c.value = (c.value.trimEnd() + " " + (p.token === "<eos>" ? "\n" : p.token)).trimStart();
        predict();
      });
      li.append(b);
      bars.append(li);
    }
  } catch (e) {
    bars.replaceChildren(el("li", e.message, "error"));
  }
}

// ------------------------------------------------------------------ generation
let controller = null;

function numberOf(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

async function generate(ev) {
  ev.preventDefault();
  const out = $("gen-tokens"), status = $("gen-status");
  $("gen-prompt").textContent = $("prompt").value;
  out.replaceChildren();
  const params = {do_sample: true, max_new_tokens: numberOf("max-new") || 30,
    temperature: numberOf("temperature") || 1, stop_at_eos: false};
  const k = numberOf("top-k"), p = numberOf("top-p"), seed = numberOf("seed");
  if (k) params.top_k = k;
  if (p !== null && p < 1) params.top_p = p;
  if (seed !== null) params.seed = seed;
  controller = new AbortController();
  $("gen-button").disabled = true;
  $("stop-button").disabled = false;
  status.textContent = "generating…";
  let n = 0;
  try {
    const r = await fetch("/generate_stream", {method: "POST", signal: controller.signal,
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({inputs: $("prompt").value, parameters: params})});
    if (!r.ok) throw new Error((await r.json()).error || r.statusText);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = JSON.parse(line.slice(5));
          if (data.error) throw new Error(data.error);
          const t = el("span", data.token.text, "gen-tok");
          t.dataset.index = String(data.index);
          out.append(t);
          n += 1;
          if (data.details) status.textContent =
            `${data.details.generated_tokens} tokens (${data.details.finish_reason}), seed ${data.details.seed}`;
        }
      }
    }
  } catch (e) {
    status.textContent = e.name === "AbortError" ? `stopped after ${n} tokens` : e.message;
  } finally {
    controller = null;
    $("gen-button").disabled = false;
    $("stop-button").disabled = true;
  }
}

function stop() {
  if (controller) controller.abort();
}

document.addEventListener("DOMContentLoaded", () => {
  const scale = document.querySelector(".scale");
  for (let i = 0; i < VIRIDIS.length; i++) {
    const s = el("span");
    s.style.backgroundColor = VIRIDIS[i];
    scale.append(s);
  }
  $("score-form").addEventListener("submit", score);
  $("next-form").addEventListener("submit", predict);
  $("gen-form").addEventListener("submit", generate);
  $("stop-button").addEventListener("click", stop);
  showModel();
});
