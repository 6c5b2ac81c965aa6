"""Open a model checkpoint — a GGUF file or a Hugging Face directory (config.json, tokenizer.json,
*.safetensors) — into its config, tensor index and tokenizer, without reading tensor data.

`model` may be a path (CPython), a ByteSource / bytes / JS Uint8Array holding a GGUF file, a list of
those holding the shards of a split GGUF (in order), or a dict {file name: source} holding a Hugging
Face checkpoint (what the browser worker passes). A path named like a shard
(`name-00001-of-00003.gguf`) opens every shard beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import ModelFormatError, RequestError
from .formats.gguf import GGUFFile, merge_split
from .formats.quants import TensorInfo
from .formats.source import as_source
from .model_url import shard_names
from .formats.gguf_keys import General
from .models import config_from_gguf, config_from_hf
from .models.config import ModelConfig, validate_config
from .tokenizer import Tokenizer
from .tokenizer.hf_vocab import CHAT_TEMPLATE_FILE


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict[str, TensorInfo]  # by GGUF-style name for GGUF, by HF name for safetensors
    tokenizer: Tokenizer
    format: str  # "gguf" or "hf"
    name: str = ""


# The files of a Hugging Face checkpoint that a user may pass by mistake instead of its folder.
HF_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "model.safetensors.index.json",
)


def open_checkpoint(model: Any) -> Checkpoint:
    if isinstance(model, Checkpoint):  # already open (e.g. the benchmark's random-weight checkpoints)
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not path:  # was "model file not found: " (a path of nothing): an unset shell variable, --model "$MODEL"
            raise RequestError(
                "the model's path is empty: give a GGUF file or a Hugging Face folder (or no model: the default one)"
            )
        if os.path.isdir(path):
            files = {f: os.path.join(path, f) for f in os.listdir(path)}
            _check_hf_files(files, f"{path} is a folder", "one of its GGUF files", "a checkpoint's folder")
            return _open_hf(files, os.path.basename(path.rstrip("/")))
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file not found: {path}")
        name = os.path.basename(path)
        if name.endswith(".safetensors") or name in HF_FILES:  # else read as a GGUF: "not a GGUF file"
            raise ModelFormatError(
                f"{path} is one file of a Hugging Face checkpoint: pass its folder "
                f"({os.path.dirname(os.path.abspath(path))}), which holds config.json, tokenizer.json and the "
                "*.safetensors"
            )
        shards = shard_names(path)
        if shards:
            missing = [p for p in shards if not os.path.exists(p)]
            if missing:
                raise FileNotFoundError(f"shard {missing[0]} of the split model {path} is missing")
            return _open_gguf(shards, os.path.basename(path))
        return _open_gguf(path, os.path.basename(path))
    if isinstance(model, dict):
        _check_hf_files(model, "{file name: bytes} was given", "the bytes of a GGUF file by themselves", "a checkpoint")
        return _open_hf(model, "model")
    return _open_gguf(model, "model")


def _check_hf_files(files: dict[str, Any], what: str, one_gguf: str, checkpoint: str) -> None:
    """A folder or {file name: bytes} that holds no Hugging Face checkpoint: said so, with its GGUF files named
    (it said "Hugging Face checkpoint lacks config.json" of a folder or dict holding just a .gguf)."""
    if "config.json" in files or any(f.endswith(".safetensors") for f in files):
        return
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    raise ModelFormatError(
        f"{what} but not a Hugging Face checkpoint (no config.json, no *.safetensors): "
        + (f"pass {one_gguf} ({', '.join(ggufs[:3])})" if ggufs else "pass a .gguf file")
        + f" or {checkpoint}"
    )


def _open_gguf(src: Any, name: str) -> Checkpoint:
    parts = list(src) if isinstance(src, (list, tuple)) else [src]
    if not parts:
        raise ModelFormatError("a split GGUF needs at least one shard")
    files = []
    for i, part in enumerate(parts):
        try:
            files.append(GGUFFile(part))
        except RequestError as e:  # e.g. "cannot read model bytes from a int": of which shard, in a list?
            if part is src:
                raise
            raise RequestError(f"a split GGUF is given as a list of its shards; shard {i}: {e}") from e
    metadata, tensors = merge_split(files)
    cfg = _config(lambda: config_from_gguf(metadata, set(tensors)))
    validate_config(cfg, tensors)
    tok = Tokenizer.from_gguf_metadata(metadata)
    return Checkpoint(cfg, tensors, tok, "gguf", metadata.get(General.NAME) or name)


def _config(read) -> ModelConfig:
    """`read()`'s config, with the errors of malformed values typed (validate_config then checks it)."""
    try:
        cfg = read()
    # e.g. head_count 0, a string size, a list where config.json has a dict (rope_parameters)
    except (ZeroDivisionError, TypeError, ValueError, OverflowError, AttributeError) as e:
        raise ModelFormatError(f"model metadata is malformed ({type(e).__name__}: {e}).") from None
    return cfg


def _file_bytes(files: dict[str, Any], name: str) -> bytes:
    src = as_source(files[name])
    return src.read(0, src.size)


def _read_json(files: dict[str, Any], name: str, required: bool = True) -> Any:
    if name not in files:
        if required:
            raise ModelFormatError(f"Hugging Face checkpoint lacks {name}")
        return None
    try:
        return json.loads(_file_bytes(files, name).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{name} is not valid JSON: {e}") from e


def _open_hf(files: dict[str, Any], name: str) -> Checkpoint:
    from .formats.safetensors import SafetensorsFile, SafetensorsModel

    cfg = _config(lambda: config_from_hf(_read_json(files, "config.json")))
    tok_cfg = _read_json(files, "tokenizer_config.json", False)
    # transformers' save_pretrained writes the chat template to chat_template.jinja, not into tokenizer_config.json.
    # The tokenizer's loader looks for that file next to a path only: given the parsed JSON here, it never saw it,
    # and chat said of an instruction-tuned model that it had no chat template.
    if CHAT_TEMPLATE_FILE in files and (
        tok_cfg is None or isinstance(tok_cfg, dict) and not tok_cfg.get("chat_template")
    ):
        try:
            template = _file_bytes(files, CHAT_TEMPLATE_FILE).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelFormatError(f"{CHAT_TEMPLATE_FILE} is not UTF-8 text: {e}") from e
        tok_cfg = {**(tok_cfg or {}), "chat_template": template}
    tok = Tokenizer.from_hf(_read_json(files, "tokenizer.json"), tok_cfg)
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    if not shards:
        raise ModelFormatError("Hugging Face checkpoint has no *.safetensors files")
    if INDEX in files:  # sharded: the index says which shard holds each tensor
        src = as_source(files[INDEX])
        weights = SafetensorsModel.from_index(src.read(0, src.size), {f: files[f] for f in shards})
    else:
        weights = SafetensorsModel({f: SafetensorsFile(files[f], f) for f in shards})
    validate_config(cfg, weights.tensors)
    return Checkpoint(cfg, weights.tensors, tok, "hf", name)


INDEX = "model.safetensors.index.json"
