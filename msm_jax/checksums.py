"""Checksums of saved arrays: computed where the arrays live, verified wherever they are read.

The checksum of an array is two 32-bit sums over its elements, sum(bits(x[i]) * m_k(i))
mod 2^32, where bits() is the element's bit pattern and m_k(i) an odd number derived from
the element's linear (C-order) index i. Integer addition mod 2^32 is associative, so:
- a sharded array is summed on its own devices, in any layout and any process count, and
  gives the same checksum bit for bit (no gather, one all-reduce of 8 bytes);
- a reader that streams an array in slices (an exporter reading one layer at a time) adds up
  the partial sums of the slices (`partial_checksum` with the slice's offset);
- changing any one element always changes both sums (the multipliers are odd, so
  (b' - b) * m is never 0 mod 2^32 for b' != b); a random change of many elements goes
  unnoticed with probability about 2^-64.
It is a corruption check (flipped or lost bytes), not a cryptographic hash.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MULTIPLIERS = (0x9E3779B1, 0x85EBCA77)  # golden-ratio and murmur3 constants: well-spread odd numbers
OFFSETS = (0x7F4A7C15, 0x165667B1)
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}
NUMPY_CHUNK = 1 << 22  # elements per step of the host-side sum (bounded temporary memory)


def key_name(path) -> str:
    """The dotted name of a leaf in a pytree ("layers.mlp.up_proj.kernel", "1.0.mu.embed...")."""
    return jax.tree_util.keystr(path, simple=True, separator=".")


def _unsigned(dtype) -> type:
    size = np.dtype(dtype).itemsize
    if size not in _UINT:
        raise ValueError(f"no checksum for {np.dtype(dtype)} arrays ({size}-byte elements)")
    return _UINT[size]


def _device_sums(x: jax.Array) -> jax.Array:
    """[2] uint32 sums of one array, computed on its shards."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    bits = jax.lax.bitcast_convert_type(x, _unsigned(x.dtype)).astype(jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= x.shape[axis]
    terms = tuple(bits * ((index * jnp.uint32(m) + jnp.uint32(o)) | jnp.uint32(1)) for m, o in zip(MULTIPLIERS, OFFSETS))
    # One variadic reduction: XLA fuses both sums into a single pass (on CPU ~20x faster
    # than two jnp.sum calls, and faster than one).
    zero = jnp.uint32(0)
    sums = jax.lax.reduce(terms, (zero, zero), lambda a, b: (a[0] + b[0], a[1] + b[1]), tuple(range(x.ndim)))
    return jnp.stack(sums)


@jax.jit
def _tree_sums(leaves: list) -> jax.Array:
    return jnp.stack([_device_sums(x) for x in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)


def _hex(sums) -> str:
    return "".join(f"{int(s):08x}" for s in sums)


def tree_checksums(tree: Any) -> dict[str, str]:
    """{leaf name: checksum} of a pytree of jax arrays (global arrays on any mesh; call it
    on every process of a multi-host job, like any computation on global arrays)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    sums = _tree_sums([x for _, x in flat])
    local = np.asarray(sums.addressable_data(0))  # the sums are replicated on every device
    return {key_name(path): _hex(s) for (path, _), s in zip(flat, local)}


def partial_checksum(values: np.ndarray, offset: int = 0) -> np.ndarray:
    """[2] uint32 sums of host values that start at linear index `offset` of their array;
    add the partial sums of the slices of an array (mod 2^32) to get its checksum."""
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype == np.bool_:
        flat = flat.astype(np.uint8)
    bits = flat.view(_unsigned(flat.dtype))
    total = np.zeros(2, np.uint32)
    for start in range(0, bits.size, NUMPY_CHUNK):
        chunk = bits[start:start + NUMPY_CHUNK].astype(np.uint32)
        index = (np.arange(start, start + chunk.size, dtype=np.uint64) + np.uint64(offset)).astype(np.uint32)
        for k, (m, o) in enumerate(zip(MULTIPLIERS, OFFSETS)):
            with np.errstate(over="ignore"):
                weights = (index * np.uint32(m) + np.uint32(o)) | np.uint32(1)
                total[k] += np.sum(chunk * weights, dtype=np.uint32)
    return total


def host_checksum(values: np.ndarray) -> str:
    """The checksum of a whole array held on the host (as `tree_checksums` gives it)."""
    return _hex(partial_checksum(values))


def combine(*partials: np.ndarray) -> str:
    """The checksum of an array from the partial sums of slices that cover it once."""
    with np.errstate(over="ignore"):
        return _hex(np.sum(np.stack(partials), axis=0, dtype=np.uint32))
