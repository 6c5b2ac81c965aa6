"""Paged KV cache: per-layer K and V GPU buffers cut into fixed-size blocks, plus a pure-Python
block allocator.

Layout of each layer's K (and V) buffer: [num_blocks, block_size, n_kv_heads, head_dim], f32, f16, or
"f16x2": f16 values packed two to a u32 (dims 2i, 2i+1 in the low, high half; WGSL's core pack2x16float),
half the bytes of f32 on adapters without shader-f16 (planner.kv_cache_dtype decides).
A sequence owns a list of physical blocks; its block table maps logical block i (positions
[i*B, (i+1)*B)) to a physical block, so a sequence's pages need not be contiguous or in order.
The kernels (shaders/kv_write, attention_*) read the table from a u32 storage buffer that the host
fills with `table_bytes(seq_id)` before each step.
Where every attention over the cache has a sliding window (Mistral, Mixtral), blocks that fall wholly
behind it go back to the pool as a sequence grows (`ensure(first_new=)`); Gemma 2/3's global layers read
every position, so their cache keeps all blocks.
"""
from __future__ import annotations

import struct

from .errors import ContextOverflowError, KVCacheFullError, ModelTooLargeError
from .gpu.base import Buffer, Device

DTYPE_BYTES = {"f32": 4, "f16": 2, "f16x2": 2}  # per value


def max_blocks(device: Device, n_kv_heads: int, head_dim: int, block_size: int, dtype: str) -> int:
    """The most cache blocks the adapter allows: one layer's K (or V) buffer is bound whole."""
    return device.max_binding_size // (block_size * n_kv_heads * head_dim * DTYPE_BYTES[dtype])


class PagedKVCache:
    def __init__(self, device: Device, n_layers: int, n_kv_heads: int, head_dim: int, block_size: int = 16,
                 num_blocks: int = 256, dtype: str = "f32", max_blocks_per_seq: int | None = None) -> None:
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"KV cache dtype must be 'f32', 'f16' or 'f16x2', got {dtype!r}")
        if dtype == "f16":
            device.require("shader-f16")
            if head_dim % 2:
                raise ValueError("an f16 KV cache needs an even head_dim")
        if dtype == "f16x2" and head_dim % 4:
            raise ValueError("a packed f16x2 KV cache needs head_dim % 4 == 0 (the kernels load 4 dims at a time)")
        if block_size < 1 or num_blocks < 1:
            raise ValueError("block_size and num_blocks must be >= 1")
        self.device = device
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.block_size, self.num_blocks, self.dtype = block_size, num_blocks, dtype
        self.max_blocks_per_seq = min(num_blocks, max_blocks_per_seq or num_blocks)

        # Check the adapter's limits before allocating anything: one layer's K buffer is bound whole.
        self.layer_bytes = num_blocks * block_size * n_kv_heads * head_dim * DTYPE_BYTES[dtype]
        fit = max_blocks(device, n_kv_heads, head_dim, block_size, dtype)
        if num_blocks > fit:
            limit = device.max_binding_size
            raise ModelTooLargeError(
                f"The KV cache needs {self.layer_bytes / 2**20:.1f} MiB per layer for K (and as much for V), more than "
                f"this GPU's storage-buffer binding limit of {limit / 2**20:.1f} MiB: use at most {fit} blocks "
                f"({fit * block_size} positions), i.e. a smaller context window or fewer parallel sequences.")

        self.k: list[Buffer] = []
        self.v: list[Buffer] = []
        for layer in range(n_layers):
            self.k.append(device.create_buffer(self.layer_bytes, f"kv_cache.k{layer}"))
            self.v.append(device.create_buffer(self.layer_bytes, f"kv_cache.v{layer}"))

        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out block 0 first
        # a sequence's blocks; None where a block fell out of every layer's sliding window and was released
        self._blocks: dict[int, list[int | None]] = {}
        self._length: dict[int, int] = {}
        self._windows: list[int | None] = []  # of the attentions reading this cache (attend_window)

    def attend_window(self, window: int | None) -> None:
        """An attention over this cache sees the last `window` positions of a query (None: all)."""
        self._windows.append(window)

    @property
    def window(self) -> int | None:
        """The positions every attention over this cache may still read behind a query: blocks wholly
        further back are released (ensure); None where some layer attends to everything (Gemma's global
        layers) or no attention said."""
        if not self._windows or None in self._windows:
            return None
        return max(self._windows)

    def released(self, seq_id: int) -> int:
        """Positions at the start of `seq_id` whose blocks were released (see window)."""
        have = self._blocks.get(seq_id, [])
        n = 0
        while n < len(have) and have[n] is None:
            n += 1
        return n * self.block_size

    # -- allocator ---------------------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def blocks(self, seq_id: int) -> list[int]:
        return list(self._blocks.get(seq_id, ()))

    def length(self, seq_id: int) -> int:
        """Positions reserved (and, once the step ran, written) for `seq_id`."""
        return self._length.get(seq_id, 0)

    def ensure(self, seq_id: int, n_positions: int, first_new: int | None = None) -> None:
        """Make positions [0, n_positions) of `seq_id` backed by blocks. All or nothing: on failure
        nothing is allocated and the cache stays as it was. first_new: the first position the coming step
        writes; with a window, blocks that no query from there on can see go back to the pool first."""
        have = self._blocks.setdefault(seq_id, [])
        stale = []
        if first_new is not None and self.window is not None:
            # a query at first_new reads from first_new + 1 - window on (attention kernels start there)
            stale = [i for i in range(min(len(have), (first_new + 1 - self.window) // self.block_size))
                     if have[i] is not None]
        need = -(-n_positions // self.block_size)
        if need > self.max_blocks_per_seq:
            raise ContextOverflowError(
                f"Sequence {seq_id} needs {n_positions} positions but one sequence may hold at most "
                f"{self.max_blocks_per_seq * self.block_size}: shorten the conversation or load the model with a "
                f"larger context window.")
        extra = need - len(have)
        if extra > len(self._free) + len(stale):
            raise KVCacheFullError(
                f"The KV cache is full: sequence {seq_id} needs {extra} more blocks of {self.block_size} positions "
                f"but only {len(self._free)} are free. Free (reset) another conversation, or load the engine "
                f"with more cache blocks.")
        for i in stale:
            self._free.append(have[i])
            have[i] = None
        for _ in range(max(0, extra)):
            have.append(self._free.pop())
        self._length[seq_id] = max(self._length.get(seq_id, 0), n_positions)

    def truncate(self, seq_id: int, n_positions: int) -> None:
        """Keep the first `n_positions` of `seq_id` (prefix reuse); blocks past them go back to the pool."""
        have = self._blocks.get(seq_id)
        if have is None:
            return
        keep = -(-n_positions // self.block_size)
        while len(have) > keep:
            b = have.pop()
            if b is not None:
                self._free.append(b)
        self._length[seq_id] = min(self._length.get(seq_id, 0), n_positions)

    def free(self, seq_id: int) -> None:
        """Return all blocks of `seq_id` to the pool."""
        for b in reversed(self._blocks.pop(seq_id, [])):
            if b is not None:
                self._free.append(b)
        self._length.pop(seq_id, None)

    def table_bytes(self, seq_id: int) -> bytes:
        """The block table of `seq_id` as little-endian u32s, for the `block_table` storage buffer
        (at least 4 bytes, since WebGPU writes must not be empty)."""
        blocks = self._blocks.get(seq_id) or [0]
        # a released block's entry: any block id (no kernel reads positions out of the window)
        return struct.pack(f"<{len(blocks)}I", *(b or 0 for b in blocks))

    def table_buffer_size(self) -> int:
        """Bytes a block_table buffer needs to hold the longest sequence's table."""
        return 4 * self.max_blocks_per_seq

    def destroy(self) -> None:
        for b in self.k + self.v:
            b.destroy()
        self.k, self.v = [], []
