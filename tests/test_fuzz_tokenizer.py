"""hypothesis fuzzing of the tokenizer and chat templates with malformed input: every failure is a typed
error (TokenizerError / ChatTemplateError), never another exception or a hang, and the object that
raised stays usable (the same text encodes to the same ids afterwards).

The vocabularies here are small ones written by hand (GPT-2's byte alphabet plus a few merges; a
SentencePiece vocabulary with <0xXX> byte pieces) so each example is fast."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from webllm_py.errors import ChatTemplateError, TokenizerError
from webllm_py.tokenizer import Tokenizer, render_chat_template
from webllm_py.tokenizer.bpe import BYTE_TO_CHAR

FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _gpt2_meta() -> dict:
    """A byte-level BPE vocabulary as GGUF metadata: 256 byte characters, 3 merges, 2 control tokens."""
    pieces = [BYTE_TO_CHAR[b] for b in range(256)]
    merges = ["h e", "l l", "he ll"]
    pieces += ["he", "ll", "hell", "<|im_start|>", "<|im_end|>"]
    kinds = [1] * (len(pieces) - 2) + [3, 3]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": pieces,
        "tokenizer.ggml.token_type": kinds,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": len(pieces) - 2,
        "tokenizer.ggml.eos_token_id": len(pieces) - 1,
        "tokenizer.chat_template": CHATML,
    }


def _spm_meta() -> dict:
    """A SentencePiece vocabulary as GGUF metadata: <unk>, <s>, </s>, 256 byte pieces, a few words."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581", "\u2581h", "el", "lo"]
    kinds = [2, 3, 3] + [6] * 256 + [1] * 4
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": pieces,
        "tokenizer.ggml.token_type": kinds,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }


def _hf_json() -> dict:
    """A byte-level BPE tokenizer.json (GPT-2 style)."""
    vocab = {BYTE_TO_CHAR[b]: b for b in range(256)}
    vocab.update({"he": 256, "ll": 257, "hell": 258})
    return {
        "model": {"type": "BPE", "vocab": vocab, "merges": ["h e", "l l", "he ll"]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "decoder": {"type": "ByteLevel"},
        "normalizer": None,
        "added_tokens": [{"id": 259, "content": "<|endoftext|>", "special": True}],
    }


TOKENIZERS = {
    "gpt2": Tokenizer.from_gguf_metadata(_gpt2_meta()),
    "spm": Tokenizer.from_gguf_metadata(_spm_meta()),
    "hf": Tokenizer.from_hf(_hf_json()),
}
PROBE = "hello, world \u00e9\u4e16 <|im_start|>"
BASELINE = {k: t.encode(PROBE) for k, t in TOKENIZERS.items()}


def _still_usable(name: str) -> None:
    tok = TOKENIZERS[name]
    assert tok.encode(PROBE) == BASELINE[name]


# -- malformed vocabulary data --------------------------------------------------------------------
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mangled_meta(draw):
    """A valid GGUF tokenizer metadata dict with some keys removed, retyped or truncated."""
    meta = draw(st.sampled_from([_gpt2_meta, _spm_meta]))()
    for key in draw(st.lists(st.sampled_from(sorted(meta)), max_size=3, unique=True)):
        action = draw(st.sampled_from(["drop", "junk", "truncate", "junk_item"]))
        if action == "drop":
            del meta[key]
        elif action == "junk":
            meta[key] = draw(junk)
        elif isinstance(meta[key], list) and meta[key]:
            if action == "truncate":
                meta[key] = meta[key][: draw(st.integers(0, len(meta[key]) - 1))]
            else:
                meta[key] = list(meta[key])
                meta[key][draw(st.integers(0, len(meta[key]) - 1))] = draw(junk)
    return meta


def _exercise(tok: Tokenizer) -> None:
    """A tokenizer that loaded must encode and decode, or refuse with TokenizerError."""
    for text in ("hello", "<|im_start|>x", "\u00e9 \ud800"):
        try:
            ids = tok.encode(text)
        except TokenizerError:
            continue
        assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
        try:
            tok.decode(ids)
        except TokenizerError:
            pass


@FUZZ
@given(mangled_meta())
def test_malformed_gguf_vocabulary_is_a_tokenizer_error(meta):
    try:
        tok = Tokenizer.from_gguf_metadata(meta)
    except TokenizerError:
        return
    _exercise(tok)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])  # (negative ids mean "none")
def test_non_finite_special_id_is_a_tokenizer_error(bad):
    """Found by the fuzz above in CI: int(inf) raised OverflowError, not the typed error."""
    meta = _gpt2_meta()
    meta["tokenizer.ggml.bos_token_id"] = bad
    with pytest.raises(TokenizerError):
        Tokenizer.from_gguf_metadata(meta)


@pytest.mark.parametrize(
    "where, bad",
    [("added", 2**40), ("added", 10**7), ("vocab", -1), ("vocab", 1.5), ("added", True), ("added", "259")],
)
def test_implausible_hf_token_id_is_a_tokenizer_error(where, bad):
    """Found by the fuzz below in CI (a 300 s hang): an id of 2**40 sized the piece list by it; a negative id
    silently overwrote a piece from the list's end. Refused now, at once, before any list is sized."""
    tj = _hf_json()
    if where == "added":
        tj["added_tokens"][0]["id"] = bad
    else:
        tj["model"]["vocab"]["he"] = bad
    with pytest.raises(TokenizerError, match="token id"):
        Tokenizer.from_hf(tj)
    _still_usable("hf")


def test_hf_vocabulary_with_holes_loads():
    """Real files may skip a few ids: a gap of 1,000 before an added token still loads, its id kept."""
    tj = _hf_json()
    tj["added_tokens"][0]["id"] = 1259
    tok = Tokenizer.from_hf(tj)
    assert tok.vocab_size == 1260 and tok.encode("<|endoftext|>", add_special=False) == [1259]


@st.composite
def mangled_hf(draw):
    """A tokenizer.json object with parts retyped/removed, or now and then a path that is no file."""
    if draw(st.integers(0, 9)) == 0:
        return "/nonexistent/" + draw(st.text(st.characters(exclude_characters="\0/"), max_size=20))
    obj = _hf_json()
    paths = [
        ("model",),
        ("model", "vocab"),
        ("model", "merges"),
        ("model", "type"),
        ("pre_tokenizer",),
        ("pre_tokenizer", "type"),
        ("added_tokens",),
        ("normalizer",),
        ("decoder",),
    ]
    for path in draw(st.lists(st.sampled_from(paths), max_size=3, unique=True)):
        parent = obj
        for k in path[:-1]:
            parent = parent.get(k) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if draw(st.booleans()):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(junk)
    if draw(st.booleans()) and isinstance(obj.get("added_tokens"), list):
        obj["added_tokens"].append(draw(st.dictionaries(st.sampled_from(["id", "content", "special"]), junk)))
    return obj


@FUZZ
@given(mangled_hf(), st.one_of(st.none(), junk))
def test_malformed_hf_tokenizer_json_is_a_tokenizer_error(tokenizer_json, config):
    try:
        tok = Tokenizer.from_hf(tokenizer_json, config if isinstance(config, dict) or config is None else config)
    except TokenizerError:
        return
    _exercise(tok)


# -- arbitrary text, arbitrary ids ----------------------------------------------------------------
any_char = st.characters(codec=None, exclude_categories=())  # includes lone surrogates (category Cs)
texts = st.one_of(
    st.text(any_char, max_size=60),
    st.lists(
        st.sampled_from(
            [
                "\ud800",
                "\udfff",
                "a\udc80b",
                "<|im_start|>",
                "<|im_end|>",
                " ",
                "\n",
                "hello",
                "\u00e9",
                "\U0001f600",
                "\x00",
                "<0x41>",
                "<unk>",
            ]
        ),
        max_size=12,
    ).map("".join),
)


@FUZZ
@given(st.sampled_from(sorted(TOKENIZERS)), texts, st.booleans(), st.booleans())
def test_encode_any_text_gives_ids_or_a_tokenizer_error(name, text, add_special, parse_special):
    tok = TOKENIZERS[name]
    try:
        ids = tok.encode(text, add_special=add_special, parse_special=parse_special)
    except TokenizerError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text), "only unencodable text may be refused"
    else:
        assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
        if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            # Round trip where the text is valid Unicode (byte pieces make every character encodable).
            assert tok.decode(ids, skip_special=False).lstrip(" ").endswith(text.lstrip(" ")) or "<" in text
    _still_usable(name)


@FUZZ
@given(st.sampled_from(sorted(TOKENIZERS)), st.lists(st.integers(-(2**33), 2**33), max_size=8), st.booleans())
def test_decode_out_of_range_ids_is_a_tokenizer_error(name, ids, skip_special):
    tok = TOKENIZERS[name]
    bad = [i for i in ids if not 0 <= i < tok.vocab_size]
    if bad:
        with pytest.raises(TokenizerError) as e:
            tok.decode(ids, skip_special=skip_special)
        assert str(bad[0]) in str(e.value)
    else:
        assert isinstance(tok.decode(ids, skip_special=skip_special), str)
    _still_usable(name)


@pytest.mark.parametrize("bad", [[None], ["5"], [1.5], [[1]], [True, -1]])
def test_decode_non_integer_ids_is_a_tokenizer_error(bad):
    tok = TOKENIZERS["gpt2"]
    with pytest.raises(TokenizerError):
        tok.decode(bad)
    _still_usable("gpt2")


# -- chat templates -------------------------------------------------------------------------------
message = st.one_of(junk, st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls"]), junk, max_size=4))


@FUZZ
@given(st.one_of(junk, st.lists(message, max_size=4)), st.sampled_from(["gpt2", "spm"]))
def test_malformed_messages_are_a_chat_template_error(messages, name):
    tok = TOKENIZERS["gpt2"]
    try:
        out = tok.apply_chat_template(messages, chat_template=CHATML)
    except ChatTemplateError:
        pass
    else:
        assert isinstance(out, str)
    _still_usable("gpt2")


RAISING_TEMPLATES = [
    "{{ raise_exception('no system role') }}",
    "{{ messages[10]['content'] }}",
    "{{ messages[0]['content'] / 0 }}",
    "{{ 1 // 0 }}",
    "{% for m in messages %}{{ m.content.nope() }}{% endfor %}",
    "{{ messages | map(attribute='x') | join(1) + 2 }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",  # unbounded recursion
    "{% for m in messages %}",  # does not compile
    "{{ 'x' * 10 ** 12 }}",  # the sandbox refuses huge repeats? either way, a typed error
    "{{ strftime_now(1) }}",
    "{{ messages.append(1) }}",  # immutable sandbox
]


@pytest.mark.parametrize("template", RAISING_TEMPLATES)
def test_templates_that_fail_raise_chat_template_error(template):
    with pytest.raises(ChatTemplateError):
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    # The template cache and renderer stay usable.
    assert render_chat_template(CHATML, [{"role": "user", "content": "hi"}]).endswith("assistant\n")


SANDBOX_ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ raise_exception.__code__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ self._TemplateReference__context }}",
    "{{ (messages | first).__class__ }}",
    "{{ strftime_now.__globals__['datetime'] }}",
    "{{ ''.format.__self__ }}",
    "{{ '{0.__class__}'.format('') }}",
]


def test_dunder_access_in_a_template_is_a_chat_template_error():
    with pytest.raises(ChatTemplateError, match="unsafe|access"):
        render_chat_template("{{ ''.__class__.__mro__ }}", [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("template", SANDBOX_ESCAPES)
def test_template_cannot_reach_python_internals(template):
    """Chat templates come from model files: they run in jinja2's ImmutableSandboxedEnvironment,
    where dunder attributes and format tricks are refused (SecurityError -> ChatTemplateError). Some
    lookups render as Undefined (empty) instead: then nothing of Python may show in the output."""
    try:
        out = render_chat_template(template, [{"role": "user", "content": "hi"}])
    except ChatTemplateError:
        return
    for leak in ("class", "module", "function", "built-in", "os", "datetime"):
        assert leak not in out


def test_no_code_path_evaluates_text_except_the_exec_request():
    """Model-provided text (templates, vocabularies, metadata) is data: the only eval/exec/compile of
    code in webllm_py is worker.py's `exec` request, which runs code the page itself sends
    (webllm.runPython). Chat templates go through jinja2's sandbox (tested above)."""
    import ast
    from pathlib import Path

    import webllm_py

    root = Path(webllm_py.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("eval", "exec", "compile", "__import__")
            ):
                found.append((path.relative_to(root).as_posix(), node.func.id))
    assert found and {p for p, _ in found} == {"worker.py"}, found
