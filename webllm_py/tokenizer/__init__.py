"""Pure-Python tokenizers (byte-level BPE, SentencePiece BPE), streaming detokenizer and chat templates.

Runs under Pyodide: stdlib + jinja2 only.

    tok = Tokenizer.from_gguf_metadata(meta)        # or Tokenizer.from_hf(tokenizer_json, tokenizer_config)
    ids = tok.encode(tok.apply_chat_template(messages))
    dec = StreamDecoder(tok); text = "".join(dec.feed(i) for i in ids) + dec.flush()
"""

from .chat_template import render_chat_template
from .stream import StreamDecoder
from .tokenizer import Tokenizer

__all__ = ["Tokenizer", "StreamDecoder", "render_chat_template"]
