"""GGUF metadata keys (llama.cpp's names) as data, the way gguf-py's constants.py keeps them.

Keys of one architecture are templates: `LLM.BLOCK_COUNT.format(arch="llama")` is "llama.block_count";
`ArchMeta` reads them for one file's architecture.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelFormatError


class General:
    ARCHITECTURE = "general.architecture"
    NAME = "general.name"
    ALIGNMENT = "general.alignment"


class LLM:
    """Hyper-parameters, per architecture."""

    VOCAB_SIZE = "{arch}.vocab_size"
    CONTEXT_LENGTH = "{arch}.context_length"
    EMBEDDING_LENGTH = "{arch}.embedding_length"
    BLOCK_COUNT = "{arch}.block_count"
    FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
    USE_PARALLEL_RESIDUAL = "{arch}.use_parallel_residual"
    EXPERT_COUNT = "{arch}.expert_count"
    EXPERT_USED_COUNT = "{arch}.expert_used_count"
    ATTN_LOGIT_SOFTCAPPING = "{arch}.attn_logit_softcapping"
    FINAL_LOGIT_SOFTCAPPING = "{arch}.final_logit_softcapping"


class Attention:
    HEAD_COUNT = "{arch}.attention.head_count"
    HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
    KEY_LENGTH = "{arch}.attention.key_length"
    LAYERNORM_EPS = "{arch}.attention.layer_norm_epsilon"
    LAYERNORM_RMS_EPS = "{arch}.attention.layer_norm_rms_epsilon"
    SLIDING_WINDOW = "{arch}.attention.sliding_window"
    SLIDING_WINDOW_PATTERN = "{arch}.attention.sliding_window_pattern"


class Rope:
    DIMENSION_COUNT = "{arch}.rope.dimension_count"
    FREQ_BASE = "{arch}.rope.freq_base"
    FREQ_BASE_SWA = "{arch}.rope.freq_base_swa"
    SCALING_TYPE = "{arch}.rope.scaling.type"
    SCALING_FACTOR = "{arch}.rope.scaling.factor"


class Tokenizer:
    MODEL = "tokenizer.ggml.model"
    PRE = "tokenizer.ggml.pre"
    LIST = "tokenizer.ggml.tokens"
    TOKEN_TYPE = "tokenizer.ggml.token_type"
    SCORES = "tokenizer.ggml.scores"
    MERGES = "tokenizer.ggml.merges"
    BOS_ID = "tokenizer.ggml.bos_token_id"
    EOS_ID = "tokenizer.ggml.eos_token_id"
    EOT_ID = "tokenizer.ggml.eot_token_id"
    EOM_ID = "tokenizer.ggml.eom_token_id"
    UNK_ID = "tokenizer.ggml.unknown_token_id"
    ADD_BOS = "tokenizer.ggml.add_bos_token"
    ADD_EOS = "tokenizer.ggml.add_eos_token"
    ADD_PREFIX = "tokenizer.ggml.add_space_prefix"
    CHAT_TEMPLATE = "tokenizer.chat_template"


class ArchMeta:
    """One file's metadata read through its architecture's key templates."""

    def __init__(self, meta: dict[str, Any], arch: str) -> None:
        self.meta, self.arch = meta, arch

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key` (a template above), or `default` when absent."""
        return self.meta.get(key.format(arch=self.arch), default)

    def need(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default`; ModelFormatError when both are missing."""
        v = self.get(key, default)
        if v is None:
            raise ModelFormatError(f"GGUF metadata lacks '{key.format(arch=self.arch)}'")
        return v
