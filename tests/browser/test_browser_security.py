"""Security and privacy in the browser: the runtime works under a strict Content-Security-Policy, needs no
JavaScript eval, sends nothing off the page's origin, and serves simultaneous requests unmixed.

One Chromium of this module's own, with its network locked to loopback (host resolver maps every other
name to nothing, a dead proxy for everything that is not loopback). Every HTML/JS response gets the
strict policy as a header (the worker's policy comes from worker.js's headers, not from the page's
<meta>), so the page AND the worker run under it. One model load, tiny max_tokens (SwiftShader decodes
at ~0.1 tok/s)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from .conftest import CONFIG, decode, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The same policy as static/csp.html's <meta> (docs/security.md explains each directive).
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; "
    "style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'"
)
LOCKDOWN_ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    "--proxy-server=http://127.0.0.1:9",  # loopback bypasses a proxy by default; anything else dead-ends
]
PROMPTS = ["Hi", "Name a color.", "What is 2+2?"]
MAX_TOKENS = 2


@pytest.fixture(scope="module")
def locked(chromium, server_url):
    """(context, page at csp.html with the runtime ready, list of every request URL the context made)."""
    # A second browser from the package's Playwright driver (one sync driver per process).
    browser = chromium.browser_type.launch(
        executable_path=CONFIG.CHROMIUM, args=CONFIG.LAUNCH_ARGS + LOCKDOWN_ARGS, headless=CONFIG.HEADLESS
    )
    context = browser.new_context()
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))

    def add_csp(route):
        if route.request.resource_type in ("document", "script") or urlsplit(route.request.url).path.endswith(
            (".js", ".mjs", ".html", "/")
        ):
            resp = route.fetch()
            route.fulfill(response=resp, headers={**resp.headers, "content-security-policy": CSP})
        else:
            route.continue_()

    context.route(server_url + "**", add_csp)
    page = open_page(context, server_url + "csp.html")
    page.info = page.evaluate("() => webllm.ready()")
    yield context, page, requests
    browser.close()


def _run_python(page, code: str):
    r = page.evaluate(
        """(code) => webllm.runPython(code).then((ok) => ({ ok }),
        (e) => ({ error: `${e.name}: ${e.message}` }))""",
        code,
    )
    assert "error" not in r, r["error"]
    return decode(r["ok"])


def test_runtime_runs_python_under_strict_csp(locked):
    _, page, _ = locked
    assert page.info  # Pyodide started in the worker: scripts, wasm and wheels all loaded under the policy
    assert _run_python(page, "import jinja2, webllm_py\nsum(range(10))") == 45
    # The page's policy is the strict one (from the header and the <meta>).
    assert "'unsafe-eval'" not in CSP and "'unsafe-inline'" not in CSP
    assert not [e for e in page.errors if "Content Security Policy" in e], page.errors


def test_worker_is_under_the_policy_and_needs_no_eval(locked):
    """The worker got the header policy: JavaScript eval is refused there, and the runtime still works."""
    _, page, _ = locked
    r = _run_python(
        page,
        """
import js
try:
    js.eval("1 + 1")
    out = "eval allowed"
except Exception as e:
    out = type(e).__name__ + ": " + str(e)
out""",
    )
    assert "EvalError" in r or "unsafe-eval" in r, r


def test_chat_template_renders_in_the_sandbox_in_the_browser(locked):
    _, page, _ = locked
    r = _run_python(
        page,
        """
from webllm_py.errors import ChatTemplateError
from webllm_py.tokenizer import render_chat_template
try:
    render_chat_template("{{ ''.__class__.__mro__ }}", [{"role": "user", "content": "x"}])
    out = "rendered"
except ChatTemplateError as e:
    out = "ChatTemplateError"
out""",
    )
    assert r == "ChatTemplateError"


def test_a_chat_template_step_that_builds_a_huge_string_is_refused_in_the_browser(locked):
    """Where it matters most (Pyodide's heap is 4 GB at most, shared with the model): one filter or % step of
    400 MB is a ChatTemplateError naming the cap, and the sandbox renders normally after it."""
    _, page, _ = locked
    r = _run_python(
        page,
        """
from webllm_py.errors import ChatTemplateError
from webllm_py.tokenizer import render_chat_template
out = []
for t in ('{{ "x" | center(400000000) }}', '{{ "%400000000d" % 1 }}', '{{ (["y"] * 1000000) | join("x" * 400) }}'):
    try:
        out.append("rendered %d" % len(render_chat_template(t, [{"role": "user", "content": "x"}])))
    except ChatTemplateError as e:
        out.append(str(e))
out.append(render_chat_template("{{ messages[0].content }}", [{"role": "user", "content": "ok"}]))
out""",
    )
    assert all("would build a value of up to" in m and "more than 4194304" in m for m in r[:3]), r
    assert r[3] == "ok"


@pytest.fixture(scope="module")
def loaded(locked):
    """The model loaded once in the CSP page (window.__engine)."""
    _, page, _ = locked
    r = page.evaluate(
        """async (model) => {
        try { window.__engine = await webllm.create({ model }); return { ok: true }; }
        catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; }
    }""",
        MODEL,
    )
    assert "error" not in r, r["error"]
    return page


def test_three_simultaneous_requests_get_their_own_output(loaded):
    r = loaded.evaluate(
        """async ([prompts, max_tokens]) => {
        const ask = (p) => window.__engine.chat.completions.create(
            { messages: [{ role: 'user', content: p }], max_tokens, temperature: 0 });
        const text = (resp) => resp.choices[0].message.content;
        try {
            const alone = [];
            for (const p of prompts) alone.push(text(await ask(p)));
            const together = (await Promise.all(prompts.map(ask)));
            return { alone, together: together.map(text), usage: together.map((x) => x.usage.completion_tokens),
                     ids: together.map((x) => x.id) };
        } catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; }
    }""",
        [PROMPTS, MAX_TOKENS],
    )
    assert "error" not in r, r["error"]
    assert len(set(r["alone"])) > 1  # different answers, so mixing would show
    assert r["together"] == r["alone"]
    assert r["usage"] == [MAX_TOKENS] * len(PROMPTS)
    assert len(set(r["ids"])) == len(PROMPTS)


def test_no_request_leaves_the_origin(locked, loaded, server_url):
    context, page, requests = locked
    # One more generation so the recording surely spans page load, model load and generation.
    n = page.evaluate("""async () => (await window.__engine.chat.completions.create(
        { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1, temperature: 0 })).usage.completion_tokens""")
    assert n == 1
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(server_url))
    assert any(u.endswith(MODEL) for u in requests), "the model download was not recorded"
    assert any("pyodide" in u for u in requests), "the worker's requests were not recorded"
    foreign = [u for u in requests if not (u.startswith(origin + "/") or u.startswith(("blob:" + origin, "data:")))]
    assert foreign == []


def test_network_is_locked_to_loopback(locked):
    """Control for the lockdown: a page without the policy cannot reach another host either."""
    context, _, _ = locked
    page = context.new_page()
    try:
        r = page.evaluate("""() => fetch('http://example.com/', { mode: 'no-cors' }).then(() => 'reached',
            (e) => 'failed: ' + e.message)""")
    finally:
        page.close()
    assert r.startswith("failed"), r
