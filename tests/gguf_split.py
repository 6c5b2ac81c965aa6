"""Split a GGUF into shards the way llama-gguf-split does, with gguf-py's own writer (its
split_max_tensors mode writes `name-0000k-of-0000N.gguf`, each a complete GGUF with split.no /
split.count / split.tensors.count, the model's metadata in the first): an independent producer of the
format webllm_py/formats/gguf.py's merge_split reads."""

from __future__ import annotations

from pathlib import Path


def split_gguf(src: str | Path, out: Path, shards: int) -> list[Path]:
    """Write `src` as `shards` files into `out` (named after `src`); returns their paths in order."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    per = -(-len(reader.tensors) // shards)
    path = Path(out) / Path(src).name
    writer = gguf.GGUFWriter(path, arch, split_max_tensors=per)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    names = writer.format_shard_names(path)
    assert len(names) == shards, f"{len(reader.tensors)} tensors do not split into {shards} shards of {per}"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return names
