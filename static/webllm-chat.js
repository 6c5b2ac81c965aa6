// <webllm-chat>: a chat box any page can embed, on top of webllm.js.
//
//   <script type="module" src="/webllm-chat.js"></script>
//   <webllm-chat model="SmolLM2-135M-Instruct.Q4_1.gguf" max-tokens="256" temperature="0.7" autoload></webllm-chat>
//
// Attributes: model (a name from /models/index.json, a URL or hf:owner/repo/file.gguf), max-tokens
// (an integer >= 1), temperature (a number >= 0; 0 = greedy), system-prompt, autoload (load when
// attached; otherwise a Load button), placeholder. A max-tokens or temperature that is not such a
// number fails send() with a RequestError shown in the widget (nothing is sent).
// Methods: load(), send(text), stop() (this widget's answer only: widgets of one model share an
// engine), clear() (also the New chat button). Removed from the page, a widget stops its answer.
// One worker holds one model: widgets of different models on one page replace each other's (the
// replaced one offers Load again); changing `model` drops the loaded engine. Answers render as safe
// markdown (chatkit.js, shared with chat.html). Events (bubbling): webllm-loaded {model}, webllm-reply {text, usage}, webllm-error {error}.
// Its look lives in a shadow root, so page styles do not leak in; `--webllm-accent` and
// `--webllm-font` (CSS custom properties) restyle it from outside.
import webllm from "./webllm.mjs";
import { E } from "./protocol.js";
import { MARKDOWN_CSS, finishNote, progressText, streamChat, streamRenderer } from "./chatkit.js";

// One worker holds one engine: widgets asking for the same model share it.
const engines = new Map(); // model -> Promise<Engine>

const STYLE = `
:host { display: block; font: var(--webllm-font, 14px/1.45 system-ui, sans-serif); color: #1d1d1f;
  border: 1px solid #d7d7db; border-radius: 12px; background: #fff; overflow: hidden; max-width: 40rem; }
header { display: flex; align-items: center; gap: .6rem; padding: .55rem .8rem; background: #f5f5f7; border-bottom: 1px solid #e5e5ea; }
header .title { font-weight: 600; flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
header .status { color: #6e6e73; font-size: 12px; }
button { font: inherit; border: 1px solid #c7c7cc; background: #fff; border-radius: 8px; padding: .25rem .8rem; cursor: pointer; }
button.primary { background: var(--webllm-accent, #0a64d8); border-color: transparent; color: #fff; }
button:disabled { opacity: .45; cursor: default; }
progress { display: block; width: 100%; height: 4px; border: 0; appearance: none; }
[hidden] { display: none !important; }
progress::-webkit-progress-bar { background: #eee; }
progress::-webkit-progress-value { background: var(--webllm-accent, #0a64d8); }
.log { display: flex; flex-direction: column; gap: .5rem; padding: .8rem; min-height: 8rem; max-height: 24rem; overflow-y: auto; }
.empty { color: #8e8e93; text-align: center; margin: auto; }
.msg { padding: .45rem .75rem; border-radius: 12px; white-space: pre-wrap; max-width: 85%; min-width: 0; overflow-wrap: anywhere; box-sizing: border-box; }
.msg .md { white-space: normal; }
.user { align-self: flex-end; background: var(--webllm-accent, #0a64d8); color: #fff; }
.assistant { align-self: flex-start; background: #f0f0f3; }
.assistant.pending .body:empty::after { content: "\\2026"; color: #8e8e93; }
form { display: flex; gap: .5rem; padding: .6rem .8rem; border-top: 1px solid #e5e5ea; }
textarea { flex: 1; font: inherit; resize: none; border: 1px solid #c7c7cc; border-radius: 8px; padding: .35rem .55rem; }
footer { display: flex; justify-content: space-between; gap: 1rem; padding: 0 .8rem .5rem; font-size: 12px; color: #6e6e73; min-height: 1em; }
.error { color: #b00020; }
@media (max-width: 480px) { .msg { max-width: 100%; } }
${MARKDOWN_CSS}`;

// The look, as one constructed stylesheet that every widget's shadow root adopts: a <style> element there is
// inline style, which a page whose Content-Security-Policy lacks style-src 'unsafe-inline' (docs/security.md's)
// refuses, and the widget came unstyled. style-src does not govern constructed sheets. A <style> only where
// there are none (Safari before 16.4).
let sheet = null;
function adoptStyle(root) {
  if (!("adoptedStyleSheets" in root) || typeof CSSStyleSheet.prototype.replaceSync !== "function") return `<style>${STYLE}</style>`;
  if (!sheet) { sheet = new CSSStyleSheet(); sheet.replaceSync(STYLE); }
  root.adoptedStyleSheets = [sheet];
  return "";
}

class WebLLMChat extends HTMLElement {
  constructor() {
    super();
    this.history = [];
    this.engine = null;
    this.busy = false;
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `${adoptStyle(root)}
      <header><span class="title" part="title"></span><span class="status" part="status"></span>
        <button class="new" part="new" title="Clear the conversation">New chat</button>
        <button class="load primary" part="load">Load</button></header>
      <progress hidden value="0" max="1"></progress>
      <div class="log" part="log"><div class="empty">Load the model, then ask something.</div></div>
      <form part="form"><textarea rows="1" disabled></textarea>
        <button class="send primary" type="submit" disabled>Send</button>
        <button class="stop" type="button" disabled>Stop</button></form>
      <footer><span class="speed"></span><span class="error" role="alert"></span></footer>`;
    this.$ = (sel) => root.querySelector(sel);
    this.$(".load").onclick = () => this.load();
    this.$("form").onsubmit = (ev) => { ev.preventDefault(); this.send(this.$("textarea").value); };
    this.$("textarea").onkeydown = (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); this.send(this.$("textarea").value); }
    };
    this.$(".stop").onclick = () => this.stop();
    this.$(".new").onclick = () => this.clear();
  }

  static get observedAttributes() { return ["model", "placeholder"]; }
  attributeChangedCallback(name, old, value) {
    // Another model: the loaded engine is the old model's (answers would come from it under the new
    // title). Its answer in progress stops; Load (or the next send) loads the new one.
    if (name === "model" && old !== value && this.engine) {
      this.stop();
      this.engine = null;
      this._status("not loaded");
    }
    this._render();
  }

  get model() { return this.getAttribute("model") || ""; }

  connectedCallback() {
    this._render();
    if (this.hasAttribute("autoload")) this.load();
  }

  // Removed from the page (not moved: that reconnects at once): its answer is read by nobody.
  disconnectedCallback() {
    queueMicrotask(() => { if (!this.isConnected && this.busy) this.stop(); });
  }

  // max_tokens and temperature from the attributes, checked: `+"abc"` is NaN, which travels as null
  // (no limit) through JSON.
  _sampling() {
    const bad = (attr, want) => {
      throw new webllm.WebLLMError(E.RequestError, `${attr}="${this.getAttribute(attr)}" is not ${want}.`);
    };
    const mt = (this.getAttribute("max-tokens") ?? "").trim();
    const maxTokens = mt === "" ? 256 : Number(mt);
    if (!Number.isInteger(maxTokens) || maxTokens < 1) bad("max-tokens", "an integer >= 1");
    const t = (this.getAttribute("temperature") ?? "").trim();
    const temperature = t === "" ? 0.7 : Number(t);
    if (!Number.isFinite(temperature) || temperature < 0) bad("temperature", "a number >= 0 (0 = greedy)");
    return { maxTokens, temperature };
  }

  _render() {
    this.$(".title").textContent = this.model ? this.model.replace(/\.gguf$/, "") : "webllm chat (no model attribute)";
    this.$("textarea").placeholder = this.getAttribute("placeholder") || "Ask something (Enter sends)";
    this._controls();
  }

  _controls() {
    this.$(".load").hidden = !!this.engine;
    this.$(".load").disabled = this.busy || !this.model;
    this.$("textarea").disabled = !this.engine;
    this.$(".send").disabled = this.busy || !this.engine;
    this.$(".stop").disabled = !this.busy || !this.engine;
  }

  _status(text) { this.$(".status").textContent = text; }

  _error(e) {
    const hint = e && webllm.errorHint(e);
    this.$(".error").textContent = e ? `${e.message}${hint && hint !== "Stopped." ? ` ${hint}` : ""}` : "";
    if (e) this.dispatchEvent(new CustomEvent("webllm-error", { bubbles: true, detail: { error: e } }));
  }

  _progress(p) {
    const { bar, text } = progressText(p);
    if (bar) Object.assign(this.$("progress"), { hidden: false, max: bar.max, value: bar.value });
    if (text) this._status(text);
  }

  async load() {
    if (this.engine || this.busy || !this.model) return this.engine;
    this.busy = true; this._controls(); this._error(null);
    this._status("starting");
    try {
      if (!navigator.gpu) throw new webllm.WebLLMError(E.GPUUnavailableError, "This browser has no WebGPU.");
      let p = engines.get(this.model);
      if (!p) {
        p = webllm.create({ model: this.model, onProgress: (e) => this._progress(e) });
        engines.set(this.model, p);
        p.catch(() => engines.delete(this.model));
      }
      this.engine = await p;
      this._status("ready");
      this.$(".empty").textContent = "Ask something.";
      this.dispatchEvent(new CustomEvent("webllm-loaded", { bubbles: true, detail: { model: this.model } }));
    } catch (e) {
      this._status("not loaded");
      this._error(e);
    } finally {
      this.$("progress").hidden = true;
      this.busy = false; this._controls();
    }
    return this.engine;
  }

  _bubble(role, text) {
    const empty = this.$(".empty");
    if (empty) empty.remove();
    const div = document.createElement("div");
    div.className = `msg ${role}`;
    div.setAttribute("part", `message ${role}`);
    const body = document.createElement("div");
    body.className = role === "assistant" ? "body md" : "body";
    body.textContent = text;
    div.append(body);
    this.$(".log").append(div);
    this.$(".log").scrollTop = this.$(".log").scrollHeight;
    return div;
  }

  async send(text) {
    // Text only: send(42) threw an untyped TypeError from trim(); an object would be sent as "[object Object]".
    if (text !== undefined && text !== null && typeof text !== "string") {
      this._error(new webllm.WebLLMError(E.RequestError, `send(text) takes the message as a string, got ${typeof text}.`));
      return null;
    }
    text = (text || "").trim();
    if (!text || this.busy) return null;
    let sampling;
    try { sampling = this._sampling(); } catch (e) { this._error(e); return null; }
    this._answering = true;  // stop() is for this answer from here on, during a load of its own too
    if (!(await this.load())) { this._answering = this._stopping = false; return null; }
    this.$("textarea").value = "";
    this._error(null);
    this.history.push({ role: "user", content: text });
    this._bubble("user", text);
    const div = this._bubble("assistant", "");
    div.classList.add("pending");
    this.busy = true; this._controls();
    const view = streamRenderer(div.querySelector(".body"));
    const { maxTokens, temperature } = sampling;
    const system = (this.getAttribute("system-prompt") || "").trim();
    const log = this.$(".log");
    const history = this.history;
    let reply = "", usage = null;
    const speed = (s) => `${s.tokens} tokens, ${s.tokensPerS ? s.tokensPerS.toFixed(2) : "n/a"} tok/s`;
    try {
      const r = await streamChat(this.engine, {
        messages: system ? [{ role: "system", content: system }, ...history] : history,
        max_tokens: maxTokens, temperature,
      }, { onStream: (s) => { this._stream = s; if (this._stopping) s.interrupt().catch(() => {}); },
           onText: (t) => { view.update(t); log.scrollTop = log.scrollHeight; },
           onStats: (s) => { this.$(".speed").textContent = speed(s); } });
      reply = r.text; usage = r.usage;
      this.$(".speed").textContent = speed(r);
      const note = finishNote(r.finishReason, maxTokens);
      if (note) div.append(Object.assign(document.createElement("div"), { className: `finish ${r.finishReason}`, textContent: note }));
      this.dispatchEvent(new CustomEvent("webllm-reply", { bubbles: true, detail: { text: reply, usage, finishReason: r.finishReason } }));
    } catch (e) {
      reply = e.partial || "";
      this._error(e);
      if (e.name === E.ModelNotLoadedError) this._forget();
    } finally {
      view.flush();
      div.classList.remove("pending");
      // clear() during the stream started a new conversation: this answer belongs to the old one.
      if (reply && history === this.history) history.push({ role: "assistant", content: reply });
      else if (!reply) div.remove();
      this._stream = null; this._stopping = this._answering = false;
      this.busy = false; this._controls();
    }
    return reply;
  }

  // This widget's answer only: engine.interrupt() would stop (and drop the queued requests of) every
  // widget sharing the engine. Before the stream exists, it is stopped as soon as it does.
  // Another widget's model replaced this one's in the worker: the engine is gone, Load (or the next
  // send) loads it again.
  _forget() {
    const engine = this.engine;
    const p = engines.get(this.model);
    if (p) p.then((e) => { if (e === engine && engines.get(this.model) === p) engines.delete(this.model); }, () => {});
    this.engine = null;
    this._status("not loaded");
  }

  stop() {
    // An answer only: busy with a load alone (Load, autoload) there is none, and the flag set here stopped the
    // next answer as it began (New chat or a removal during the load).
    if (!this._answering) return Promise.resolve();
    this._stopping = true;
    return this._stream ? this._stream.interrupt().catch(() => {}) : Promise.resolve();
  }

  clear() {
    if (this.busy) this.stop();
    this.history = [];
    this.$(".speed").textContent = "";
    this._error(null);
    this.$(".log").replaceChildren(Object.assign(document.createElement("div"), { className: "empty", textContent: "Ask something." }));
  }
}

if (!customElements.get("webllm-chat")) customElements.define("webllm-chat", WebLLMChat);
export { WebLLMChat };
