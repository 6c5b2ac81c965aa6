"""Paged KV cache: per-layer K and V GPU buffers cut into fixed-size blocks, plus a pure-Python
block allocator.

Layout of each layer's K (and V) buffer: [num_blocks, block_size, n_kv_heads, head_dim], f32, f16, or
"f16x2": f16 values packed two to a u32 (dims 2i, 2i+1 in the low, high half; WGSL's core pack2x16float),
half the bytes of f32 on adapters without shader-f16 (planner.kv_cache_dtype decides).
A sequence owns a list of physical blocks; its block table maps logical block i (positions
[i*B, (i+1)*B)) to a physical block, so a sequence's pages need not be contiguous or in order.
The kernels (shaders/kv_write, attention_*) read the table from a u32 storage buffer (`table`, one per
cache) that the host fills with `table_bytes(seq_id)` before each step.
Where every attention over a cache has a sliding window, blocks that fall wholly behind it go back to
the pool as a sequence grows (`ensure(first_new=)`). A model's layers are split by window into
`KVCaches`, one cache per window: Mistral's (every layer windowed) is one windowed cache; Gemma 2/3 have
a full cache for the global layers and a windowed one for the local layers, whose pool holds only the
window (plus a prefill chunk) per sequence, so their KV memory does not grow with the context.
"""

from __future__ import annotations

import struct

from typing import Iterator, Sequence

from .errors import ContextOverflowError, KVCacheFullError, ModelTooLargeError
from .gpu.base import Buffer, Device

DTYPE_BYTES = {"f32": 4, "f16": 2, "f16x2": 2}  # per value


def block_bytes(n_kv_heads: int, head_dim: int, block_size: int, dtype: str) -> int:
    """Bytes of one cache block in one layer's K (or V) buffer."""
    return block_size * n_kv_heads * head_dim * DTYPE_BYTES[dtype]


def max_blocks(device: Device, n_kv_heads: int, head_dim: int, block_size: int, dtype: str) -> int:
    """The most cache blocks the adapter allows: one layer's K (or V) buffer is bound whole."""
    return device.max_binding_size // block_bytes(n_kv_heads, head_dim, block_size, dtype)


def window_blocks(window: int, max_tokens: int, block_size: int) -> int:
    """The most blocks one sequence holds at once in a cache whose attentions see `window` positions,
    with steps of up to `max_tokens`: a step from pos0 writes pos0.. pos0+max_tokens-1 and reads from
    pos0+1-window on, W+T-1 positions, which span at most ceil((W+T-2)/B) + 1 blocks."""
    return -(-(window + max_tokens - 2) // block_size) + 1


class PagedKVCache:
    def __init__(
        self,
        device: Device,
        n_layers: int | Sequence[int],
        n_kv_heads: int,
        head_dim: int,
        block_size: int = 16,
        num_blocks: int = 256,
        dtype: str = "f32",
        max_blocks_per_seq: int | None = None,
    ) -> None:
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
        # the model's layers whose K/V this cache holds (an int n: layers 0..n-1)
        self.layers = list(range(n_layers)) if isinstance(n_layers, int) else list(n_layers)
        n_layers = len(self.layers)
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.block_size, self.num_blocks, self.dtype = block_size, num_blocks, dtype
        # a sequence's logical blocks; more than the pool where a window releases blocks (window_blocks)
        self.max_blocks_per_seq = max_blocks_per_seq or num_blocks

        # Check the adapter's limits before allocating anything: one layer's K buffer is bound whole.
        self.layer_bytes = num_blocks * block_bytes(n_kv_heads, head_dim, block_size, dtype)
        fit = max_blocks(device, n_kv_heads, head_dim, block_size, dtype)
        if num_blocks > fit:
            limit = device.max_binding_size
            raise ModelTooLargeError(
                f"The KV cache needs {self.layer_bytes / 2**20:.1f} MiB per layer for K (and as much for V), more than "
                f"this GPU's storage-buffer binding limit of {limit / 2**20:.1f} MiB: use at most {fit} blocks "
                f"({fit * block_size} positions), i.e. a smaller context window or fewer parallel sequences."
            )

        self.k: dict[int, Buffer] = {}  # by model layer
        self.v: dict[int, Buffer] = {}
        for layer in self.layers:
            self.k[layer] = device.create_buffer(self.layer_bytes, f"kv_cache.k{layer}")
            self.v[layer] = device.create_buffer(self.layer_bytes, f"kv_cache.v{layer}")
        # the active sequence's block table, written by the host before each step (table_bytes)
        self.table = device.create_buffer(self.table_buffer_size(), "kv_cache.block_table")

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

    def resumable(self, seq_id: int, n_positions: int) -> bool:
        """Whether `seq_id` can keep its first `n_positions` and go on from there: the next position's
        query must not read a released block (prefix reuse, Engine)."""
        return self.window is None or self.released(seq_id) <= max(0, n_positions + 1 - self.window)

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
        self.check(seq_id, n_positions, first_new)
        stale = self._stale(seq_id, first_new)
        have = self._blocks.setdefault(seq_id, [])
        for i in stale:
            self._free.append(have[i])
            have[i] = None
        for _ in range(max(0, -(-n_positions // self.block_size) - len(have))):
            have.append(self._free.pop())
        self._length[seq_id] = max(self._length.get(seq_id, 0), n_positions)

    def _stale(self, seq_id: int, first_new: int | None) -> list[int]:
        """Blocks of `seq_id` that no query from `first_new` on can see (with a window)."""
        have = self._blocks.get(seq_id, [])
        if first_new is None or self.window is None:
            return []
        # a query at first_new reads from first_new + 1 - window on (attention kernels start there)
        return [
            i for i in range(min(len(have), (first_new + 1 - self.window) // self.block_size)) if have[i] is not None
        ]

    def check(self, seq_id: int, n_positions: int, first_new: int | None = None) -> None:
        """Raise what ensure() would raise, changing nothing."""
        have, stale = self._blocks.get(seq_id, []), self._stale(seq_id, first_new)
        need = -(-n_positions // self.block_size)
        if need > self.max_blocks_per_seq:
            raise ContextOverflowError(
                f"Sequence {seq_id} needs {n_positions} positions but one sequence may hold at most "
                f"{self.max_blocks_per_seq * self.block_size}: shorten the conversation or load the model with a "
                f"larger context window."
            )
        extra = need - len(have)
        if extra > len(self._free) + len(stale):
            raise KVCacheFullError(
                f"The KV cache is full: sequence {seq_id} needs {extra} more blocks of {self.block_size} positions "
                f"but only {len(self._free)} are free. Free (reset) another conversation, or load the engine "
                f"with more cache blocks."
            )

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

    @property
    def nbytes(self) -> int:
        """GPU bytes of K and V."""
        return 2 * self.n_layers * self.layer_bytes

    def destroy(self) -> None:
        for b in [*self.k.values(), *self.v.values(), self.table]:
            b.destroy()
        self.k, self.v = {}, {}


class KVCaches:
    """A model's KV caches, one per attention window (None: full attention), each over the layers
    with that window (`layer_windows`), with its own block pool and block table. The engine drives them
    together: ensure / truncate / free / resumable for a sequence apply to every cache. A windowed
    cache's pool holds `window_blocks` per sequence; a full one the whole context."""

    def __init__(
        self,
        device: Device,
        layer_windows: Sequence[int | None],
        n_kv_heads: int,
        head_dim: int,
        block_size: int,
        blocks_per_seq: int,
        max_sequences: int,
        max_tokens: int,
        dtype: str = "f32",
    ):
        self.dtype = dtype  # every cache's
        self.caches: dict[int | None, PagedKVCache] = {}
        try:
            for window, (layers, pool) in self.plan(layer_windows, block_size, blocks_per_seq, max_tokens).items():
                self.caches[window] = PagedKVCache(
                    device,
                    layers,
                    n_kv_heads,
                    head_dim,
                    block_size=block_size,
                    num_blocks=pool * max_sequences,
                    dtype=dtype,
                    max_blocks_per_seq=blocks_per_seq,
                )
        except BaseException:
            self.destroy()
            raise

    @staticmethod
    def plan(
        layer_windows: Sequence[int | None], block_size: int, blocks_per_seq: int, max_tokens: int
    ) -> dict[int | None, tuple[list[int], int]]:
        """window -> (its layers, blocks per sequence of its pool)."""
        out: dict[int | None, tuple[list[int], int]] = {}
        for i, w in enumerate(layer_windows):
            w = int(w) if w else None
            pool = blocks_per_seq if w is None else min(blocks_per_seq, window_blocks(w, max_tokens, block_size))
            out.setdefault(w, ([], pool))[0].append(i)
        return out

    @classmethod
    def fit(
        cls,
        device: Device,
        layer_windows: Sequence[int | None],
        n_kv_heads: int,
        head_dim: int,
        block_size: int,
        max_sequences: int,
        max_tokens: int,
        dtype: str,
    ) -> int:
        """The most blocks per sequence whose caches (`plan`) this adapter can bind. Each layer's K (and V)
        buffer, `max_sequences` times its cache's pool, is bound whole: a full cache's pool grows with the
        context, so one binding caps it; a windowed cache's stops at `window_blocks`, so where every
        window's pool fits (Mistral: every layer windowed) only the block table bounds the context (one u32
        per block, bound whole too: table_buffer_size)."""
        most = max_blocks(device, n_kv_heads, head_dim, block_size, dtype) // max_sequences
        table = device.max_binding_size // 4
        # planned for one block more than a binding holds: the pools still within it are capped windows
        pools = [pool for _, pool in cls.plan(layer_windows, block_size, most + 1, max_tokens).values()]
        return min(most, table) if max(pools) > most else table

    @classmethod
    def sizes(
        cls,
        layer_windows: Sequence[int | None],
        n_kv_heads: int,
        head_dim: int,
        block_size: int,
        blocks_per_seq: int,
        max_sequences: int,
        max_tokens: int,
        dtype: str,
    ) -> dict[int | None, tuple[int, int]]:
        """window -> (its number of layers, bytes of one layer's K or V buffer: PagedKVCache.layer_bytes),
        as the constructor would allocate them."""
        block = block_bytes(n_kv_heads, head_dim, block_size, dtype)
        plan = cls.plan(layer_windows, block_size, blocks_per_seq, max_tokens)
        return {w: (len(layers), pool * max_sequences * block) for w, (layers, pool) in plan.items()}

    def __getitem__(self, window: int | None) -> PagedKVCache:
        return self.caches[int(window) if window else None]

    def __iter__(self) -> Iterator[PagedKVCache]:
        return iter(self.caches.values())

    def __len__(self) -> int:
        return len(self.caches)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self)

    def ensure(self, seq_id: int, n_positions: int, first_new: int | None = None) -> None:
        """PagedKVCache.ensure on every cache, all or nothing."""
        for c in self:
            c.check(seq_id, n_positions, first_new)
        for c in self:
            c.ensure(seq_id, n_positions, first_new)

    def truncate(self, seq_id: int, n_positions: int) -> None:
        for c in self:
            c.truncate(seq_id, n_positions)

    def free(self, seq_id: int) -> None:
        for c in self:
            c.free(seq_id)

    def resumable(self, seq_id: int, n_positions: int) -> bool:
        return all(c.resumable(seq_id, n_positions) for c in self)

    def destroy(self) -> None:
        for c in self:
            c.destroy()
