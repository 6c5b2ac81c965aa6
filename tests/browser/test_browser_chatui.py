"""The chat page as a product (issue 14): model output rendered as markdown, safely; a two-turn
conversation with a code block; New chat; the finish reason "length"; a phone-sized viewport; the
screenshot in docs/product.md.

Safety is checked two ways. The renderer (static/chatkit.js, shared by chat.html and <webllm-chat>)
is fed the attack strings directly, so the exact bytes are under test whatever the model says. Then
a real chat on SwiftShader: SmolLM2 greedy (no system prompt) echoes a raw <img onerror> tag, shown
as text. The checks on the DOM are the test's own (any on* attribute, any javascript: value, any
element that loads or runs something), not the renderer's allow-list, and any dialog fails.

Reference: SmolLM2-135M-Instruct greedy answers "Write a Python function that adds two numbers."
with a fenced ```python block (`def add_two_numbers(num1, num2):` ... `return num1 + num2`), by
`python -m webllm_py generate --chat` natively (wgpu/lavapipe), whose greedy ids match HF
transformers (PLATFORM.md)."""

from __future__ import annotations


import pytest

from .conftest import CONFIG, ROOT, open_page

pytestmark = [pytest.mark.browser]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMG = "<img src=x onerror=alert(1)>"
JS_LINK = "[x](javascript:alert(1))"
# Written under build/ (a test run must not change tracked files); docs/chat.png is a copy of one.
SCREENSHOT = ROOT / "build" / "screenshots" / "chat-two-turns.png"

# Strings a model could write to get markup into the page, each with what a reader must still see.
ATTACKS = [
    IMG,
    JS_LINK,
    "[y](JavaScript:alert(1)) [z]( javascript:alert(1) ) [w](java&#x09;script:alert(1)) [v](&#106;avascript:alert(1))",
    '<script>alert(1)</script> <a href="javascript:alert(1)">a</a> <svg onload=alert(1)>',
    "<javascript:alert(1)> [d](data:text/html,<script>alert(1)</script>) [b](vbscript:msgbox(1)) [f](file:///etc/passwd)",
    '![i](x" onerror="alert(1)) ![j](javascript:alert(1)) ![k](https://example.com/track.png)',
    '[r]: javascript:alert(1)\n\n[ref][r] and <https://example.com/" onmouseover="alert(1)>',
    "```html\n<img src=x onerror=alert(1)>\n```\n`<b onclick=alert(1)>` | a |\n|---|\n| <i onclick=alert(1)> |",
]

# The test's own notion of unsafe (independent of chatkit.js's allow-list): what it finds under root.
_UNSAFE = """(root) => {
  const bad = [];
  for (const el of root.querySelectorAll('*')) {
    if (/^(script|img|iframe|object|embed|svg|math|style|link|meta|form|input|button|base|video|audio|source)$/i.test(el.tagName)) bad.push(el.outerHTML);
    for (const a of el.attributes) {
      if (/^on/i.test(a.name)) bad.push(`${el.tagName} ${a.name}`);
      if (/^\\s*(javascript|vbscript|data|file):/i.test(a.value.replace(/[\\u0000-\\u0020]/g, ''))) bad.push(`${el.tagName} ${a.name}=${a.value}`);
    }
  }
  for (const a of root.querySelectorAll('a')) {
    if (!/^(https?:|mailto:)/i.test(a.getAttribute('href') || '')) bad.push(`a href=${a.getAttribute('href')}`);
    if (!/\\bnoopener\\b/.test(a.rel || '')) bad.push(`a without rel=noopener: ${a.outerHTML}`);
  }
  return bad;
}"""


def _watch_dialogs(page):
    page.dialogs = []

    def on_dialog(d):
        page.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)


def test_renderer_shows_attacks_as_text_and_keeps_safe_links(webllm_page):
    page = webllm_page
    _watch_dialogs(page)
    r = page.evaluate(
        """async ([texts, unsafe]) => {
      const { renderMarkdown } = await import('/chatkit.js');
      const check = eval(unsafe);
      const box = document.body.appendChild(document.createElement('div'));
      const out = texts.map((t) => {
        const d = box.appendChild(document.createElement('div'));
        renderMarkdown(d, t);
        return { text: d.textContent, html: d.innerHTML, bad: check(d) };
      });
      const ok = box.appendChild(document.createElement('div'));
      renderMarkdown(ok, '[site](https://example.com/a?b=1) mail <me@example.com>\\n\\n```python\\ndef f(x):\\n    return x < 1\\n```');
      await new Promise((r) => setTimeout(r, 500)); // an <img onerror> would have fired by now
      const links = [...ok.querySelectorAll('a')].map((a) => [a.getAttribute('href'), a.target, a.rel]);
      const code = ok.querySelector('pre > code');
      const res = { out, links, code: code && [code.className, code.textContent], bad: check(ok) };
      box.remove();
      return res;
    }""",
        [ATTACKS, _UNSAFE],
    )
    assert page.dialogs == []
    for attack, o in zip(ATTACKS, r["out"]):
        assert o["bad"] == [], (attack, o["html"])
    # The raw tag and the javascript: link read as the characters the model wrote.
    assert IMG in r["out"][0]["text"]
    assert r["out"][1]["text"].strip() == JS_LINK
    assert "<script>alert(1)</script>" in r["out"][3]["text"]
    assert "<img src=x onerror=alert(1)>" in r["out"][7]["text"]
    assert r["bad"] == []
    assert r["links"] == [
        ["https://example.com/a?b=1", "_blank", "noopener noreferrer nofollow"],
        ["mailto:me@example.com", "_blank", "noopener noreferrer nofollow"],
    ]
    assert r["code"] == ["language-python", "def f(x):\n    return x < 1\n"]


# -- one chat page with the model loaded, shared by the tests below ----------------------------------
@pytest.fixture(scope="module")
def chat(chromium, server_url):
    page = open_page(chromium, server_url + "chat.html")
    _watch_dialogs(page)
    page.set_viewport_size({"width": 820, "height": 900})
    page.wait_for_function(
        "() => /Runtime ready/.test(document.getElementById('loadinfo').textContent)", timeout=CONFIG.READY_TIMEOUT_MS
    )
    assert page.input_value("#model") == MODEL
    assert page.eval_on_selector_all("#models option", "os => os.map(o => o.value)") == [MODEL]
    page.click("#settings summary")
    page.fill("#temperature", "0")
    page.click("#load")
    page.wait_for_function(
        "() => /^Loaded /.test(document.getElementById('loadinfo').textContent)", timeout=CONFIG.READY_TIMEOUT_MS
    )
    yield page
    page.close()


def ask(page, text, max_tokens):
    page.fill("#max_tokens", str(max_tokens))
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_function(
        "() => !document.getElementById('send').disabled && !document.querySelector('.msg.assistant.pending')",
        timeout=CONFIG.READY_TIMEOUT_MS,
    )
    assert page.text_content("#error") == ""
    return page.locator(".msg.assistant").last


def prompt_tokens(page):
    """The prompt's length in tokens, from the page's final stats line ("N tokens (prompt P), ...")."""
    import re

    return int(re.search(r"\(prompt (\d+)\)", page.text_content("#speed")).group(1))


@pytest.mark.slow
def test_two_turns_code_blocks_length_note_phone_new_chat_and_echoed_tag(chat):
    page = chat
    # Turn 1: a fenced code block, cut by max_tokens before its closing fence: still <pre><code>,
    # and the answer says it was cut.
    a1 = ask(page, "Write a Python function that adds two numbers.", 24)
    code = a1.locator("pre > code")
    assert code.count() == 1 and code.get_attribute("class") == "language-python"
    src = code.text_content()
    assert src.startswith("def add_two_numbers(num1, num2):") and "return num1 + num2" in src
    assert "```" not in a1.locator(".body").text_content()
    assert a1.locator(".finish.length").count() == 1
    assert "token limit (max tokens 24)" in a1.locator(".finish").text_content()
    assert "tokens/s decode" in page.text_content("#speed")

    # Turn 2 (the history goes with it): a second, closed code block.
    a2 = ask(page, "Now one that multiplies them.", 24)
    assert page.locator(".msg").count() == 4
    code2 = a2.locator("pre > code")
    assert code2.count() == 1 and "return num1 * num2" in code2.text_content()
    with_history = prompt_tokens(page)

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.locator("main").screenshot(path=str(SCREENSHOT))
    print(f"\nscreenshot: {SCREENSHOT} ({SCREENSHOT.stat().st_size} bytes)")

    # Phone: 375x667, nothing wider than the screen (code blocks scroll inside themselves).
    page.set_viewport_size({"width": 375, "height": 667})
    widths = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] == 375, widths
    page.set_viewport_size({"width": 820, "height": 900})

    # New chat: the page and the history are cleared. The next question is sent alone (a shorter
    # prompt than turn 2's) and SmolLM2 answers it as it does in a fresh conversation: it echoes
    # the raw tag, which must stay text.
    page.click("#newchat")
    assert page.locator(".msg").count() == 0 and page.text_content("#speed") == ""
    a3 = ask(page, f'Repeat after me: "{IMG}"', 16)
    assert prompt_tokens(page) < with_history - 20
    assert IMG in a3.locator(".body").text_content()
    assert a3.locator(".body img").count() == 0
    bad = page.evaluate(f"() => ({_UNSAFE})(document.getElementById('messages'))")
    assert bad == [] and page.dialogs == []
    assert page.errors == []


def test_widget_refuses_bad_sampling_attributes_before_loading(webllm_page):
    """max-tokens="abc" was +"abc" = NaN, which JSON sends as null (no limit); temperature="-1" reached
    the engine. Each is a RequestError shown in the widget, and nothing is loaded or sent."""
    r = webllm_page.evaluate(
        """async () => {
      await import('/webllm-chat.js');
      const out = [];
      for (const [attr, value] of [['max-tokens', 'abc'], ['max-tokens', '0'], ['max-tokens', '2.5'],
                                   ['temperature', '-1'], ['temperature', 'hot']]) {
        const el = document.createElement('webllm-chat');
        el.setAttribute('model', 'no-such-model-probe2.gguf');
        el.setAttribute(attr, value);
        document.body.append(el);
        const names = [];
        el.addEventListener('webllm-error', (ev) => names.push(ev.detail.error.name));
        const reply = await el.send('hi');
        const root = el.shadowRoot;
        out.push({ attr, value, reply, names, error: root.querySelector('.error').textContent,
                   status: root.querySelector('.status').textContent, bubbles: root.querySelectorAll('.msg').length });
        el.remove();
      }
      return out;
    }"""
    )
    for x in r:
        assert x["reply"] is None and x["names"] == ["RequestError"], x
        assert f'{x["attr"]}="{x["value"]}"' in x["error"] and x["status"] == "" and x["bubbles"] == 0, x


def test_widget_send_of_something_not_text_is_a_request_error(webllm_page):
    """send(42) threw an untyped TypeError (trim of a number); an object would have been sent as
    "[object Object]". Each is a RequestError shown in the widget; nothing is loaded or sent."""
    r = webllm_page.evaluate(
        """async () => {
      await import('/webllm-chat.js');
      const out = [];
      for (const value of [42, { text: 'hi' }, ['hi'], true]) {
        const el = document.createElement('webllm-chat');
        el.setAttribute('model', 'no-such-model-probe5.gguf');
        document.body.append(el);
        const names = [];
        el.addEventListener('webllm-error', (ev) => names.push(ev.detail.error.name));
        let reply, thrown = null;
        try { reply = await el.send(value); } catch (e) { thrown = String(e); }
        const root = el.shadowRoot;
        out.push({ reply, thrown, names, error: root.querySelector('.error').textContent,
                   bubbles: root.querySelectorAll('.msg').length, loaded: !!el.engine });
        el.remove();
      }
      return out;
    }"""
    )
    for x in r:
        assert x["thrown"] is None and x["reply"] is None and x["names"] == ["RequestError"], x
        assert "takes the message as a string" in x["error"] and x["bubbles"] == 0 and not x["loaded"], x


# A stand-in engine (the widget's `engine` is set directly: no model needed): each stream sends a
# chunk every 40 ms, up to 100, and ends with finish_reason "abort" once its own interrupt() is called.
_FAKE_ENGINE = """() => {
  const log = { engineInterrupts: 0, streams: [] };
  const engine = {
    interrupt: async () => { log.engineInterrupts++; },
    chat: { completions: { create: async () => {
      const s = { interrupted: false, chunks: 0 };
      log.streams.push(s);
      return {
        interrupt: async () => { s.interrupted = true; },
        async *[Symbol.asyncIterator]() {
          for (let i = 0; i < 100 && !s.interrupted; i++) {
            await new Promise((r) => setTimeout(r, 40));
            s.chunks++;
            yield { choices: [{ index: 0, delta: { content: 'w ' }, finish_reason: null }] };
          }
          yield { choices: [{ index: 0, delta: {}, finish_reason: s.interrupted ? 'abort' : 'length' }] };
        },
      };
    } } },
  };
  return { engine, log };
}"""


def test_widget_stop_and_removal_end_only_its_own_answer(webllm_page):
    """Widgets of one model share an engine: Stop called engine.interrupt(), which ends (or drops, when
    queued) the other widgets' answers too; a widget removed mid-answer let it run to max_tokens."""
    r = webllm_page.evaluate(
        """async (fake) => {
      await import('/webllm-chat.js');
      const { engine, log } = eval(fake)();
      const make = () => {
        const el = document.createElement('webllm-chat');
        el.setAttribute('model', 'shared-probe2.gguf');
        el.setAttribute('max-tokens', '100');
        document.body.append(el);
        el.engine = engine;
        el._controls();
        return el;
      };
      const a = make(), b = make();
      const ra = a.send('one'), rb = b.send('two');
      await new Promise((r) => setTimeout(r, 200));
      await a.stop();
      const replyA = await ra;
      const bRunning = b.busy && !log.streams[1].interrupted;
      b.remove();
      const t0 = performance.now();
      const replyB = await Promise.race([rb, new Promise((r) => setTimeout(() => r('still running'), 2000))]);
      const out = { replyA, bRunning, replyB, bSeconds: (performance.now() - t0) / 1000,
                    engineInterrupts: log.engineInterrupts, streams: log.streams,
                    noteA: (a.shadowRoot.querySelector('.finish') || {}).textContent };
      a.remove();
      return out;
    }""",
        _FAKE_ENGINE,
    )
    assert r["engineInterrupts"] == 0, r
    assert r["streams"][0]["interrupted"] and r["replyA"].strip() and r["noteA"] == "Stopped.", r
    assert r["bRunning"], r
    assert r["replyB"] != "still running" and r["streams"][1]["interrupted"], r
    assert r["streams"][1]["chunks"] < 100, r


def test_widget_whose_model_was_replaced_offers_load_again(webllm_page):
    """Widgets of different models replace each other's model in the one worker: the old engine's requests
    fail with ModelNotLoadedError; the widget then drops that engine (Load is shown again) instead of
    failing the same way on every later send."""
    r = webllm_page.evaluate(
        """async () => {
      await import('/webllm-chat.js');
      const el = document.createElement('webllm-chat');
      el.setAttribute('model', 'replaced-probe2.gguf');
      document.body.append(el);
      el.engine = { interrupt: async () => {}, chat: { completions: { create: async () => {
        throw new webllm.WebLLMError('ModelNotLoadedError', 'replaced by a later webllm.create');
      } } } };
      el._controls();
      const reply = await el.send('hi');
      const root = el.shadowRoot;
      const out = { reply, engine: el.engine, loadShown: !root.querySelector('.load').hidden,
                    error: root.querySelector('.error').textContent, status: root.querySelector('.status').textContent };
      el.remove();
      return out;
    }"""
    )
    assert r["engine"] is None and r["loadShown"] and r["status"] == "not loaded", r
    assert "replaced" in r["error"], r


def test_widget_model_attribute_change_drops_the_old_engine(webllm_page):
    """Changing `model` after a load retitled the widget, and its answers still came from the old model's
    engine. Now the old engine is dropped (Load again) and its answer in progress stops."""
    r = webllm_page.evaluate(
        """async (fake) => {
      await import('/webllm-chat.js');
      const { engine, log } = eval(fake)();
      const el = document.createElement('webllm-chat');
      el.setAttribute('model', 'first-probe2.gguf');
      document.body.append(el);
      el.engine = engine;
      el._controls();
      const pending = el.send('hi');
      await new Promise((r) => setTimeout(r, 150));
      el.setAttribute('model', 'second-probe2.gguf');
      const reply = await Promise.race([pending, new Promise((r) => setTimeout(() => r('still running'), 2000))]);
      const root = el.shadowRoot;
      const out = { reply, engine: el.engine, interrupted: log.streams[0].interrupted,
                    title: root.querySelector('.title').textContent, loadShown: !root.querySelector('.load').hidden };
      el.remove();
      return out;
    }""",
        _FAKE_ENGINE,
    )
    assert r["engine"] is None and r["loadShown"] and r["title"] == "second-probe2", r
    assert r["interrupted"] and r["reply"] != "still running", r


# docs/security.md's policy (static/csp.html's <meta>): no inline script or style.
STRICT_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; "
    "style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'"
)


def _widget_page_under_strict_csp(chromium, server_url):
    """widget.html served with STRICT_CSP (docs/security.md's policy): (context, page); close the context."""
    context = chromium.new_context()

    def add_csp(route):
        resp = route.fetch()
        route.fulfill(response=resp, headers={**resp.headers, "content-security-policy": STRICT_CSP})

    context.route(server_url + "widget.html", add_csp)
    return context, open_page(context, server_url + "widget.html")


def test_widget_is_styled_under_a_strict_csp(chromium, server_url):
    """The widget's look was a <style> element in its shadow root, which a page whose policy has no
    'unsafe-inline' in style-src (the policy docs/security.md recommends) refuses: the widget came unstyled (no
    header bar, no bubbles, the [hidden] rule gone) with a CSP violation on the console. Its sheet is now a
    constructed stylesheet, which style-src does not govern."""
    context, page = _widget_page_under_strict_csp(chromium, server_url)
    try:
        page.wait_for_function("() => customElements.get('webllm-chat')")
        r = page.evaluate(
            """() => {
          const el = document.querySelector('webllm-chat');
          const header = getComputedStyle(el.shadowRoot.querySelector('header'));
          return { display: header.display, border: getComputedStyle(el).borderTopWidth, radius: getComputedStyle(el).borderTopLeftRadius };
        }"""
        )
        assert r["display"] == "flex" and r["border"] == "1px" and r["radius"] == "12px", r
        assert not [e for e in page.errors if "Content Security Policy" in e], page.errors
    finally:
        context.close()


def test_aligned_table_in_model_output_needs_no_inline_style(chromium, server_url):
    """markdown-it writes a table column's alignment (`|:--|--:|`) as style="text-align:..." on every cell; under a
    policy without style-src 'unsafe-inline' each cell was a CSP violation on the console (again at every
    re-render while an answer streams) and the alignment was lost. Cells now carry a class the markdown CSS
    aligns; the renderer's output holds no style attribute."""
    context, page = _widget_page_under_strict_csp(chromium, server_url)
    try:
        page.wait_for_function("() => customElements.get('webllm-chat')")
        r = page.evaluate(
            """async () => {
          const { renderMarkdown } = await import('/chatkit.js');
          const body = document.createElement('div');
          body.className = 'md';
          document.querySelector('webllm-chat').shadowRoot.querySelector('.log').append(body);
          renderMarkdown(body, '| a | b | c |\\n|:--|--:|:-:|\\n| x | y | z |');
          await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 50)));
          return { styled: body.querySelectorAll('[style]').length,
                   align: [...body.querySelectorAll('td')].map((td) => getComputedStyle(td).textAlign) };
        }"""
        )
        assert r == {"styled": 0, "align": ["left", "right", "center"]}, r
        assert not [e for e in page.errors if "Content Security Policy" in e], page.errors
    finally:
        context.close()


def test_new_chat_or_removal_during_a_load_does_not_stop_the_first_answer(webllm_page):
    """New chat (clear()) or taking the widget off the page while its model loads called stop(), which had no
    answer to stop and left a flag set: the first answer after the load was interrupted as it began (no text,
    its bubble removed). stop() now acts on an answer only."""
    r = webllm_page.evaluate(
        """async (fake) => {
      await import('/webllm-chat.js');
      const { engine, log } = eval(fake)();
      const create = webllm.create;
      webllm.create = () => new Promise((r) => setTimeout(() => r(engine), 300));
      const out = {};
      try {
        for (const how of ['clear', 'removal']) {
          const el = document.createElement('webllm-chat');
          el.setAttribute('model', `load-then-${how}-probe4.gguf`);
          el.setAttribute('max-tokens', '3');
          document.body.append(el);
          const loading = el.load();
          if (how === 'clear') el.clear();
          else { el.remove(); await Promise.resolve(); document.body.append(el); }
          await loading;
          const reply = await el.send('hi');
          out[how] = { reply, interrupted: log.streams[log.streams.length - 1].interrupted };
          el.remove();
        }
      } finally { webllm.create = create; }
      return out;
    }""",
        _FAKE_ENGINE,
    )
    for how, x in r.items():
        assert x["reply"] and not x["interrupted"], (how, r)
