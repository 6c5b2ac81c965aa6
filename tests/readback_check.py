"""The readback ring pipelined decode relies on, as Python source run natively (tests/test_gpu_native.py)
and in Pyodide on Dawn (tests/test_dawn.py)."""

MAP_READ_RING = """
import struct
async def map_read_ring(dev, n=6):
    # Pipelined decode's readback, reduced to copies: submission k copies what the host wrote before it
    # into readback slot k % 2, and slot k-1 is mapped only after submission k went in. Each map must
    # give submission k-1's value: the host's write for k lands after k-1 ran, and k does not touch it.
    src = dev.create_buffer(16)
    slots = [dev.create_readback(16) for _ in range(2)]
    got = []
    for k in range(n):
        dev.write_buffer(src, struct.pack("<4I", k, k + 1, k + 2, 7 * k))
        rec = dev.recorder()
        rec.copy_buffer(src, 0, slots[k % 2], 0, 16)
        rec.submit()
        if k:
            got.append(list(struct.unpack("<4I", await dev.map_read(slots[(k - 1) % 2]))))
    got.append(list(struct.unpack("<2I", await dev.map_read(slots[(n - 1) % 2], 8))) + [0, 0])  # a prefix
    return got
"""
