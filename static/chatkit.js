// chatkit.js: what chat.html and <webllm-chat> share: safe markdown for model output, the stream
// loop (live tok/s, finish reason), progress and finish-reason wording.
//
// Model output is data. It is rendered with markdown-it (npm, served by `serve` as
// /vendor/markdown-it.mjs) with raw HTML off, images off and links limited to http(s)/mailto; the
// result is parsed into an inert <template> and walked once more against an allow-list of tags and
// attributes before it reaches the page (docs/product.md, "Markdown safety").
import markdownit from "./vendor/markdown-it.mjs";

const SAFE_URL = /^(https?:|mailto:)/i;

// html: false escapes any tag the model writes; linkify turns bare URLs into (checked) links.
const md = markdownit({ html: false, linkify: true, typographer: false });
md.disable("image"); // an <img> would make the browser fetch a URL the model chose
md.validateLink = (url) => SAFE_URL.test(url.trim()); // anything else stays literal text
const renderToken = (tokens, idx, options, env, self) => self.renderToken(tokens, idx, options);
md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
  tokens[idx].attrSet("target", "_blank");
  tokens[idx].attrSet("rel", "noopener noreferrer nofollow");
  return renderToken(tokens, idx, options, env, self);
};

// A table column's alignment comes as style="text-align:..." on each cell: a style attribute is inline style,
// which a page whose CSP lacks style-src 'unsafe-inline' refuses (a console error per cell per re-render, the
// alignment lost). A class instead, aligned by MARKDOWN_CSS.
for (const rule of ["th_open", "td_open"]) {
  md.renderer.rules[rule] = (tokens, idx, options, env, self) => {
    const t = tokens[idx], align = /^text-align:(left|right|center)$/.exec(t.attrGet("style") || "");
    if (t.attrs) t.attrs = t.attrs.filter(([name]) => name !== "style");
    if (align) t.attrJoin("class", `align-${align[1]}`);
    return renderToken(tokens, idx, options, env, self);
  };
}

// What markdown-it emits with the options above, and nothing else survives the second pass.
const TAGS = new Set(["P", "BR", "HR", "H1", "H2", "H3", "H4", "H5", "H6", "EM", "STRONG", "S", "CODE", "PRE",
  "BLOCKQUOTE", "UL", "OL", "LI", "A", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD"]);
const ATTRS = {
  A: (n, v) => (n === "href" && SAFE_URL.test(v.trim())) || (n === "target" && v === "_blank") || n === "rel" || n === "title",
  OL: (n, v) => n === "start" && /^\d+$/.test(v),
  CODE: (n, v) => n === "class" && /^language-[\w+#.-]*$/.test(v),
  TH: (n, v) => n === "class" && /^align-(left|right|center)$/.test(v),
  TD: (n, v) => n === "class" && /^align-(left|right|center)$/.test(v),
};

function scrub(root) {
  for (const el of [...root.querySelectorAll("*")]) {
    if (!TAGS.has(el.tagName)) { el.replaceWith(document.createTextNode(el.textContent)); continue; }
    const ok = ATTRS[el.tagName];
    for (const { name, value } of [...el.attributes]) if (!ok || !ok(name, value)) el.removeAttribute(name);
  }
}

// Markdown `text` -> the children of `el` (replacing them).
export function renderMarkdown(el, text) {
  const tpl = document.createElement("template"); // its content is inert: nothing loads or runs
  tpl.innerHTML = md.render(text);
  scrub(tpl.content);
  el.replaceChildren(tpl.content);
}

// A renderer for a growing text: at most one markdown pass per animation frame, however many
// tokens arrived in it; flush() renders what is pending now (at the end of a stream).
export function streamRenderer(el) {
  let text = "", frame = 0;
  const draw = () => { frame = 0; renderMarkdown(el, text); };
  return {
    update(t) { text = t; if (!frame) frame = requestAnimationFrame(draw); },
    flush() { if (frame) cancelAnimationFrame(frame); draw(); },
  };
}

export const fmtBytes = (n) => n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB`
  : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`;
export const fmtTime = (s) => !isFinite(s) ? "?" : s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`;

// One line for a `progress` event of webllm.create, and the bar's {value, max} (null: leave it).
export function progressText(p) {
  if (p.phase === "download") {
    const rate = p.loaded / Math.max(p.seconds || 0, 1e-3);
    const eta = p.eta ?? (p.total - p.loaded) / rate;
    return { bar: { value: p.loaded, max: p.total },
      text: `Downloading ${fmtBytes(p.loaded)} of ${fmtBytes(p.total)} (${fmtBytes(rate)}/s, ${fmtTime(eta)} left)` + (p.resumed ? ", resumed" : "") };
  }
  if (p.phase === "verify") return { bar: null, text: `Checking the sha256 of ${fmtBytes(p.total)}...` };
  if (p.phase === "cache") {
    return { bar: null, warning: p.state === "not-stored" ? p.warning : "", text: { hit: "Read from the browser cache (no download).",
      miss: "Not cached: downloading.", corrupt: "The cached copy is damaged (sha256 mismatch): downloading it again.",
      stored: "Saved in the browser cache.", "not-stored": `Not cached: ${p.warning}` }[p.state] || "" };
  }
  if (p.total) {
    return { bar: { value: p.loaded || 0, max: p.total },
      text: `Loading onto the GPU (${p.stage || p.phase}): ${fmtBytes(p.loaded || 0)} of ${fmtBytes(p.total)}` };
  }
  return { bar: null, text: `Loading: ${p.stage || p.phase || ""}` };
}

// Why an answer ended, for the reader: "" for a natural stop.
export function finishNote(reason, maxTokens) {
  if (reason === "length") return `Cut off at the token limit (max tokens ${maxTokens}): raise it, or ask to continue.`;
  if (reason === "abort") return "Stopped.";
  return "";
}

// Stream one chat answer. onStream(stream) once it exists (stream.interrupt() ends it early); onText(reply) after each piece; onStats({tokens, tokensPerS, firstTokenS})
// live. Resolves {text, usage, finishReason, tokens, tokensPerS, firstTokenS}; on an error it
// rejects with `partial` (the text so far) attached.
export async function streamChat(engine, request, { onStream, onText, onStats } = {}) {
  let text = "", tokens = 0, first = 0, finishReason = null, usage = null;
  const t0 = performance.now();
  const stats = () => {
    const secs = first ? (performance.now() - first) / 1000 : 0;
    return { tokens, tokensPerS: tokens > 1 && secs > 0 ? (tokens - 1) / secs : 0, firstTokenS: first ? (first - t0) / 1000 : null };
  };
  try {
    const stream = await engine.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } });
    if (onStream) onStream(stream);
    for await (const chunk of stream) {
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        if (!first) first = performance.now();
        text += choice.delta.content;
        tokens++;
        if (onText) onText(text);
        if (onStats) onStats(stats());
      }
      if (choice && choice.finish_reason) finishReason = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
  } catch (e) {
    e.partial = text;
    throw e;
  }
  const s = stats();
  // The engine's own decode rate when it has one: it excludes the page's and the worker's overhead.
  const x = (usage && usage.extra) || {};
  if (x.decode_tokens_per_s && usage.completion_tokens > 1) s.tokensPerS = x.decode_tokens_per_s;
  if (usage) s.tokens = usage.completion_tokens;
  return { text, usage, finishReason, ...s };
}

// Styles for rendered markdown inside a message (the page's and the widget's shadow root).
export const MARKDOWN_CSS = `
.md > :first-child { margin-top: 0; } .md > :last-child { margin-bottom: 0; }
.md p, .md ul, .md ol, .md pre, .md blockquote, .md table { margin: .45em 0; }
.md ul, .md ol { padding-left: 1.4em; }
.md pre { background: #1e1e24; color: #f4f4f6; padding: .6em .75em; border-radius: 8px; overflow-x: auto;
  white-space: pre; max-width: 100%; box-sizing: border-box; font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; }
.md code { font: .92em ui-monospace, SFMono-Regular, Menlo, monospace; background: rgba(0,0,0,.06); padding: .05em .3em; border-radius: 4px; }
.md pre code { background: none; padding: 0; font: inherit; }
.md blockquote { border-left: 3px solid #c7c7cc; padding-left: .7em; color: #555; }
.md table { border-collapse: collapse; display: block; overflow-x: auto; }
.md th, .md td { border: 1px solid #d7d7db; padding: .2em .5em; }
.md .align-left { text-align: left; } .md .align-right { text-align: right; } .md .align-center { text-align: center; }
.md a { color: #0a64d8; word-break: break-all; }
.finish { margin-top: .35em; font-size: 12px; color: #8a5a00; }
`;
