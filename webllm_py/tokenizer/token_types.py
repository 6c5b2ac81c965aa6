"""Token types and the SentencePiece space: data shared by the Tokenizer and its loaders."""

from enum import IntEnum

SPACE_MARK = "\u2581"  # SentencePiece's visible space


class TokenType(IntEnum):
    """GGUF tokenizer.ggml.token_type values (llama.cpp's llama_token_type); HF vocabularies are mapped onto them."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6
