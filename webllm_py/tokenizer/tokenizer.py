"""The Tokenizer: text <-> token ids for byte-level BPE and SentencePiece-style vocabularies.

Three ways to turn a piece of text (no special tokens in it) into ids:
- "byte_bpe": GPT-2 / Llama 3 / Qwen2 / SmolLM / StarCoder. Split into words (pretokenize.py), spell each word's
  UTF-8 bytes with GPT-2's byte characters, merge by rank. Results are cached per word.
- "spm_scores": SentencePiece BPE as llama.cpp runs it on GGUF `llama` vocabularies (Llama 2, Mistral, Gemma):
  spaces become U+2581, merge the best-scored pair first, unknown characters fall back to <0xXX> byte pieces.
- "spm_ranks": SentencePiece vocabularies converted to HF tokenizer.json: the same, but merged by merge rank.

Loaders live in gguf_vocab.py and hf_vocab.py; they only fill in the constructor's arguments.
"""

import operator

from ..errors import TokenizerError
from .bpe import BYTE_TO_CHAR, byte_level_decode, merge_by_rank, merge_by_score
from .gguf_vocab import tokenizer_args_from_gguf
from .hf_vocab import tokenizer_args_from_hf
from .pretokenize import apply_stages
from .token_types import SPACE_MARK, TokenType

# Texts of tokens that end a turn in common chat formats (llama.cpp treats the same list as end-of-generation).
END_OF_TURN_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<end_of_utterance>",
    "<|return|>",
    "<|call|>",
)


class Tokenizer:
    """Encode/decode for one vocabulary. Build with `Tokenizer.from_gguf_metadata(meta)` or
    `Tokenizer.from_hf(tokenizer_json, tokenizer_config)`."""

    def __init__(
        self,
        *,
        pieces,
        kinds,
        mode,
        stages=(),
        ranks=None,
        scores=None,
        ignore_merges=False,
        byte_fallback=True,
        unk_id=None,
        bos_id=None,
        eos_id=None,
        eos_ids=(),
        prefix_ids=(),
        suffix_ids=(),
        add_space_prefix=False,
        strip_leading_space=None,
        word_split=None,
        byte_level_prefix_space=False,
        drop_unknown_first=False,
        chat_template=None,
        special_tokens_map=None,
    ):
        if mode not in ("byte_bpe", "spm_scores", "spm_ranks"):
            raise TokenizerError(f"unknown tokenizer mode {mode!r}")
        self.mode = mode
        self._pieces = list(pieces)
        self._kinds = list(kinds)
        self._stages = list(stages)
        self._ranks = ranks or {}
        self._ignore_merges = ignore_merges
        self._byte_fallback = byte_fallback
        self.unk_id = unk_id
        self.bos_id = bos_id
        self.eos_id = eos_id
        self._prefix_ids = list(prefix_ids)
        self._suffix_ids = list(suffix_ids)
        # SentencePiece's space in front of text: "never", "always" (every text fragment between special tokens,
        # as llama.cpp and HF's Prepend normalizer do) or "first" (only text at the very start of the input).
        if add_space_prefix in (True, False):
            add_space_prefix = "always" if add_space_prefix else "never"
        self._space_prefix = add_space_prefix
        self._strip_leading_space = (
            (add_space_prefix != "never") if strip_leading_space is None else strip_leading_space
        )
        self._word_split = word_split  # spm_ranks: None, "metaspace" or "newlines"
        self._byte_level_prefix_space = byte_level_prefix_space
        # A byte with no token: HF's BPE drops it before merging (its neighbours may then merge), llama.cpp
        # after (its neighbours stay apart). Each loader asks for its reference's behaviour.
        self._drop_unknown_first = drop_unknown_first
        self.chat_template = chat_template
        self.special_tokens_map = dict(special_tokens_map or {})

        self._piece_to_id = {}
        for i, p in enumerate(self._pieces):
            if p is not None:
                self._piece_to_id.setdefault(p, i)
        if mode == "spm_scores":
            # Every piece's score: llama.cpp lets a merge produce any piece, whatever its type.
            self._scores = {p: float(s) for p, s in zip(self._pieces, scores) if p is not None}
        self._byte_ids = self._find_byte_pieces()

        # Tokens cut out of text before BPE, longest first (llama.cpp's order). Control tokens only when
        # parse_special is on; user-defined ones always.
        specials = [
            (p, i, k)
            for i, (p, k) in enumerate(zip(self._pieces, self._kinds))
            if p
            and k in (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)
            and self._piece_to_id.get(p) == i
        ]
        specials.sort(key=lambda t: -len(t[0]))
        self._specials_all = [(p, i) for p, i, _ in specials]
        self._specials_user = [(p, i) for p, i, k in specials if k == TokenType.USER_DEFINED]

        eos = set(eos_ids)
        if eos_id is not None:
            eos.add(eos_id)
        for text in END_OF_TURN_TEXTS:
            i = self._piece_to_id.get(text)
            if i is not None and self._kinds[i] in (TokenType.CONTROL, TokenType.USER_DEFINED):
                eos.add(i)
        self.eos_ids = eos
        self._word_cache = {}
        self._token_bytes = None

    # ---- vocabulary --------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def _id(self, i) -> int:
        """Token id `i` as an int, checked: every lookup by id goes through here. Any integer in range is taken
        (numpy's too: ids from np.argmax, a numpy prompt); a float, bool, str or an id out of range is a
        TokenizerError: indexing the lists directly read the last token for -1 (Python's negative index)
        and raised IndexError past the end."""
        try:
            j = operator.index(i)
        except TypeError:
            j = None
        if j is None or isinstance(i, bool) or not 0 <= j < len(self._pieces):
            raise TokenizerError(
                f"token id {i!r} is not in this vocabulary (ids are integers 0..{len(self._pieces) - 1})"
            )
        return j

    def id_to_piece(self, i: int) -> str:
        """The vocabulary's own spelling of token `i` (byte characters / U+2581 as stored)."""
        return self._pieces[self._id(i)]

    def piece_to_id(self, piece: str):
        return self._piece_to_id.get(piece)

    def is_special(self, i: int) -> bool:
        """Control tokens (BOS, EOS, chat markers): what decode(skip_special=True) leaves out."""
        return self._kinds[self._id(i)] == TokenType.CONTROL

    def token_bytes(self, i: int) -> bytes:
        """The raw bytes token `i` decodes to (control tokens: their text). Structured output needs these."""
        if self._token_bytes is None:
            self._token_bytes = [self._bytes_of(i) for i in range(len(self._pieces))]
        if type(i) is not int or not 0 <= i < len(self._token_bytes):  # the common case without a call
            i = self._id(i)
        return self._token_bytes[i]

    def _bytes_of(self, i: int) -> bytes:
        p = self._pieces[i]
        if p is None:
            return b""
        k = self._kinds[i]
        if k in (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN) and self.mode == "byte_bpe":
            return p.encode("utf-8")
        if self.mode == "byte_bpe":
            return byte_level_decode(p)
        if k == TokenType.BYTE or (i in self._byte_id_set):
            return bytes([int(p[3:5], 16)])
        return p.replace(SPACE_MARK, " ").encode("utf-8")

    def _find_byte_pieces(self):
        """Ids of the <0xXX> pieces (SentencePiece byte fallback), indexed by byte value."""
        ids = [None] * 256
        self._byte_id_set = set()
        if self.mode == "byte_bpe":
            return ids
        for b in range(256):
            i = self._piece_to_id.get(f"<0x{b:02X}>")
            if i is not None and (
                self._kinds[i] in (TokenType.BYTE, TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.NORMAL)
            ):
                ids[b] = i
                self._byte_id_set.add(i)
        return ids

    # ---- encode ------------------------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. add_special: BOS/EOS (or the HF post-processor's tokens) as the model wants.
        parse_special: spell-outs of control tokens in `text` (e.g. "<|im_start|>") become those tokens."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a str, got {type(text).__name__}")
        if any("\ud800" <= c <= "\udfff" for c in text):  # lone surrogates have no UTF-8 bytes to tokenize
            raise TokenizerError(
                "the text contains a lone UTF-16 surrogate (U+D800..U+DFFF), which is not "
                "valid Unicode (e.g. a command-line argument that is not UTF-8): pass UTF-8 "
                "text, or decode its bytes with errors='replace' first"
            )
        ids = list(self._prefix_ids) if add_special else []
        for n, frag in enumerate(self._split_specials(text, parse_special)):
            if isinstance(frag, int):
                ids.append(frag)
            else:
                self._encode_text(frag, n == 0, ids)
        if add_special:
            ids.extend(self._suffix_ids)
        return ids

    def _split_specials(self, text: str, parse_special: bool) -> list:
        """Cut special-token spellings out of `text`: a list of str fragments and int token ids."""
        if not text:
            return []
        table = self._specials_all if parse_special else self._specials_user
        frags = [text]
        for piece, tid in table:
            if piece not in text:
                continue
            out = []
            for f in frags:
                if isinstance(f, int) or piece not in f:
                    out.append(f)
                    continue
                start = 0
                while True:
                    at = f.find(piece, start)
                    if at < 0:
                        break
                    if at > start:
                        out.append(f[start:at])
                    out.append(tid)
                    start = at + len(piece)
                if start < len(f):
                    out.append(f[start:])
            frags = out
        return frags

    def _wants_space_prefix(self, at_start: bool) -> bool:
        return self._space_prefix == "always" or (self._space_prefix == "first" and at_start)

    def _encode_text(self, text: str, at_start: bool, ids: list) -> None:
        if self.mode == "byte_bpe":
            cache = self._word_cache
            if self._byte_level_prefix_space and not text.startswith(" "):
                text = " " + text
            for word in apply_stages(self._stages, text):
                got = cache.get(word)
                if got is None:
                    got = self._bpe_word(word)
                    if len(cache) < 200_000:
                        cache[word] = got
                ids.extend(got)
        elif self.mode == "spm_scores":
            if self._wants_space_prefix(at_start):
                text = " " + text
            text = text.replace(" ", SPACE_MARK)
            for sym in merge_by_score(text, self._scores):
                self._append_piece_or_bytes(sym, ids)
        else:  # spm_ranks
            # HF's Metaspace does not add a second space in front of text that starts with one.
            if self._wants_space_prefix(at_start) and not (self._word_split == "metaspace" and text[:1] == " "):
                text = " " + text
            text = text.replace(" ", SPACE_MARK)
            if self._word_split == "metaspace":
                words = _split_before_marks(text)
            elif self._word_split == "newlines":
                words = _split_newline_runs(text)
            else:
                words = [text]
            cache = self._word_cache
            vocab = self._piece_to_id
            for w in words:
                got = cache.get(w)
                if got is None:
                    got = []
                    whole = self._ignore_merges or (self._word_split == "newlines" and w[0] == "\n")
                    if whole and w in vocab:
                        got.append(vocab[w])
                    else:
                        for sym in merge_by_rank(list(w), self._ranks):
                            self._append_piece_or_bytes(sym, got)
                    if len(cache) < 200_000:
                        cache[w] = got
                ids.extend(got)

    def _bpe_word(self, word: str) -> list[int]:
        spelled = "".join([BYTE_TO_CHAR[b] for b in word.encode("utf-8")])
        vocab = self._piece_to_id
        if self._drop_unknown_first:
            spelled = "".join([ch for ch in spelled if ch in vocab])
        if self._ignore_merges:
            i = vocab.get(spelled)
            if i is not None:
                return [i]
        out = []
        for sym in merge_by_rank(list(spelled), self._ranks):
            i = vocab.get(sym)
            if i is not None:
                out.append(i)
                continue
            for ch in sym:  # a symbol no merge made into a piece: its single bytes
                j = vocab.get(ch)
                if j is not None:  # a byte the vocabulary lacks is dropped, as llama.cpp and HF do
                    out.append(j)
        return out

    def _append_piece_or_bytes(self, sym: str, ids: list) -> None:
        i = self._piece_to_id.get(sym)
        if i is not None:
            ids.append(i)
            return
        if self._byte_fallback:
            for b in sym.encode("utf-8"):
                j = self._byte_ids[b]
                if j is None:
                    j = self._piece_to_id.get(chr(b)) if b < 128 else None
                if j is None:
                    j = self.unk_id
                if j is None:
                    raise TokenizerError(f"no byte piece for 0x{b:02X} and no <unk> in the vocabulary")
                ids.append(j)
        else:
            if self.unk_id is None:
                raise TokenizerError(f"{sym!r} is not in the vocabulary and there is no <unk>")
            ids.append(self.unk_id)

    # ---- decode ------------------------------------------------------------------------------------------
    def decode_bytes(self, ids, skip_special: bool = False) -> bytes:
        """The raw bytes of `ids` joined (SentencePiece's leading space of the first piece removed)."""
        out = bytearray()
        first = True
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):  # decode(5) was a TypeError
            raise TokenizerError(f"decode() takes a list of token ids, got {type(ids).__name__}")
        for i in ids:
            i = self._id(i)
            if skip_special and self._kinds[i] == TokenType.CONTROL:
                continue
            b = self.token_bytes(i)
            if first and b:
                first = False
                if self._strip_leading_space and b[:1] == b" " and self._kinds[i] != TokenType.CONTROL:
                    b = b[1:]
            out += b
        return bytes(out)

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of `ids`; malformed UTF-8 (e.g. a cut-off multi-byte character) becomes U+FFFD."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    # ---- chat --------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tools=None, **kw) -> str:
        """Render the model's own chat template (see chat_template.py)."""
        from .chat_template import render_chat_template
        from ..errors import ChatTemplateError

        template = kw.pop("chat_template", None) or self.chat_template
        if not template:
            # Said for every caller: chat.completions and `generate --chat` take no template of their own.
            raise ChatTemplateError(
                "this model has no chat template (a base model, not tuned for chat): give it a plain prompt "
                "(completions.create(prompt=...); generate without --chat), or a template: "
                "tokenizer.apply_chat_template(messages, chat_template=...)"
            )
        variables = dict(self.special_tokens_map)
        variables.setdefault("bos_token", self._piece_text(self.bos_id))
        variables.setdefault("eos_token", self._piece_text(self.eos_id))
        variables.update(kw)
        return render_chat_template(
            template, messages, add_generation_prompt=add_generation_prompt, tools=tools, **variables
        )

    def _piece_text(self, i):
        if i is None or i >= len(self._pieces):
            return ""
        return self.token_bytes(i).decode("utf-8", errors="replace")

    # ---- loaders -----------------------------------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> "Tokenizer":
        return _typed_load(cls, tokenizer_args_from_gguf, meta)

    @classmethod
    def from_hf(cls, tokenizer_json, tokenizer_config=None) -> "Tokenizer":
        return _typed_load(cls, tokenizer_args_from_hf, tokenizer_json, tokenizer_config)


def _typed_load(cls, loader, *args) -> "Tokenizer":
    """Malformed vocabulary data (wrong types, missing keys, bad ids) surfaces as TokenizerError."""
    try:
        tok = cls(**loader(*args))
        _check_ids(tok)
        if tok.vocab_size:
            tok.token_bytes(0)  # builds every token's bytes now: a malformed piece fails here, not mid-decode
        return tok
    except TokenizerError:
        raise
    except (TypeError, ValueError, ArithmeticError, KeyError, IndexError, AttributeError, OSError, RecursionError) as e:
        raise TokenizerError(f"malformed tokenizer data: {type(e).__name__}: {e}"[:500]) from e


def _check_ids(tok: "Tokenizer") -> None:
    n = tok.vocab_size
    if not all(isinstance(k, int) for k in tok._kinds):
        raise TokenizerError("token types must be integers")
    named = [("unknown", tok.unk_id), ("BOS", tok.bos_id), ("EOS", tok.eos_id)]
    named += [("end-of-generation", i) for i in tok.eos_ids] + [("added", i) for i in tok._prefix_ids + tok._suffix_ids]
    for what, i in named:
        if i is not None and not (isinstance(i, int) and 0 <= i < n):
            raise TokenizerError(f"the {what} token id {i!r} is outside the vocabulary of {n} tokens")


def _split_before_marks(text: str) -> list[str]:
    """Metaspace(split=True): a new word starts at every U+2581."""
    out = []
    start = 0
    at = text.find(SPACE_MARK, 1)
    while at >= 0:
        out.append(text[start:at])
        start = at
        at = text.find(SPACE_MARK, at + 1)
    if start < len(text):
        out.append(text[start:])
    return out


def _split_newline_runs(text: str) -> list[str]:
    """[^\\n]+|[\\n]+ (Gemma 4): newline runs apart from the rest."""
    out = []
    n = len(text)
    i = 0
    while i < n:
        nl = text[i] == "\n"
        k = i + 1
        while k < n and (text[k] == "\n") == nl:
            k += 1
        out.append(text[i:k])
        i = k
    return out
