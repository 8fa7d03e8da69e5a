"""TV-L1's inner iterations as one fused JAX Pallas kernel (Triton on GPU), several per launch.

:mod:`utils.tvl1_keras` runs each inner iteration as about twenty XLA kernels that read and write
whole images (an estimated 110-200 bytes of memory traffic per pixel and iteration; 64 at the
least). This kernel runs ``chunk`` iterations per launch on tiles it keeps in registers and in a
private scratch tile that stays in the GPU's caches:

* the grid is (slot, tile row, tile column); a program loads its tile plus a halo of ``chunk``
  pixels on each side (``block`` = interior + 2 x halo, powers of two for Triton);
* per iteration: thresholding (``estimateV``), divergence of ``p`` (backward differences, 0
  outside the image), ``u = v + theta * div p``, forward differences of ``u`` (0 in the last
  row/column), dual update. The stencils read neighbours through the scratch tile (Triton has no
  register shifts), with a barrier between writing and reading it. Wrong values creep in from the
  block's edges by one pixel per iteration: after ``chunk`` iterations the interior is exact;
* each program writes its interior and, per iteration, its share of the stopping test's sum
  ``sum((u - u_old)^2)``.

OpenCV's stopping rule needs the sum over the whole image after every iteration, which a tile
cannot know. So a launch runs the whole chunk, the caller adds the tiles' sums, and a pair that
converged after ``j < chunk`` iterations is run again from the chunk's start for exactly ``j``
iterations by a second launch (whose other programs return at once): the same flow and the same
iteration counts as the Keras-ops solver.

Predicted, not measured (no GPU has run it yet): device-memory traffic per pixel and iteration of
``(40 x block area / interior area + 24) / chunk`` bytes in float32 (the halo is read, the interior
written): 19 B for ``chunk=5`` and ``block=(32, 64)``; with 16-bit storage of ``p`` and the warp
terms ``(24 x ... + 16) / chunk``, 12 B. The scratch tile adds about 56 bytes per block pixel and
iteration of cache traffic, which is what the design bets stays on chip.

Only the JAX backend runs it; on a CPU ``interpret=True`` (the default there) runs the same
kernel through Pallas' interpreter, which is how the tests check it. :func:`lowers_to_triton`
checks on any machine that it lowers to Triton's IR.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

FLT_EPSILON = float(np.finfo(np.float32).eps)
DEFAULT_BLOCK = (32, 64)        # rows, columns per program, halo included (powers of two)
DEFAULT_NUM_WARPS = 8
STATE_ARRAYS = 6                # u1, u2, p11, p12, p21, p22
_SCRATCH = STATE_ARRAYS         # scratch tiles per program (same order as the state)


def tile_grid(height: int, width: int, chunk: int, block: tuple[int, int] = DEFAULT_BLOCK) -> tuple[int, int]:
    """(tile rows, tile columns) covering an image: each tile's interior is ``block - 2 x chunk``."""
    block_h, block_w = block
    if any(b & (b - 1) or b <= 0 for b in block):
        raise ValueError(f"block={block}: both sides must be powers of two (Triton's block shapes)")
    if min(block) <= 2 * chunk:
        raise ValueError(f"block={block} leaves no interior for a halo of chunk={chunk} pixels on each side: "
                         f"use a larger block or a smaller chunk")
    return -(-height // (block_h - 2 * chunk)), -(-width // (block_w - 2 * chunk))


def _threshold(u, wd, rho, grad, l_t):
    """OpenCV ``estimateV`` for one flow component (as ``utils.tvl1_keras``, in jax.numpy)."""
    big = grad > FLT_EPSILON
    inside = jnp.where(big, -rho / jnp.where(big, grad, 1.0) * wd, 0.0)
    return u + jnp.where(rho < -l_t * grad, l_t * wd, jnp.where(rho > l_t * grad, -l_t * wd, inside))


def _kernel(limit_ref, *refs, height, width, block, chunk, tiles, l_t, theta, taut, storage, rerun, interpret):
    """One program: ``limit[slot]`` iterations of its tile; see the module docstring."""
    f32 = jnp.float32
    state_in, terms = refs[:6], refs[6:10]
    outs = refs[16:22] if rerun else refs[10:16]          # rerun: refs[10:16] are the aliased previous outputs
    err_ref, scratch_ref = (refs[22], refs[23]) if rerun else (refs[16], refs[17])
    block_h, block_w = block
    tiles_y, tiles_x = tiles
    inner_h, inner_w = block_h - 2 * chunk, block_w - 2 * chunk
    slot, ty, tx = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    slots = pl.num_programs(0)
    limit = limit_ref[slot]
    program = (slot * tiles_y + ty) * tiles_x + tx

    r = lax.broadcasted_iota(jnp.int32, block, 0)
    c = lax.broadcasted_iota(jnp.int32, block, 1)
    rows, cols = ty * inner_h - chunk + r, tx * inner_w - chunk + c
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    interior = inside & (r >= chunk) & (r < chunk + inner_h) & (c >= chunk) & (c < chunk + inner_w)
    has_right, has_down = cols + 1 < width, rows + 1 < height
    image = slot * (height * width) + jnp.clip(rows, 0, height - 1) * width + jnp.clip(cols, 0, width - 1)
    tile = block_h * block_w
    base = program * (_SCRATCH * tile)
    here = r * block_w + c
    left, up = r * block_w + jnp.maximum(c - 1, 0), jnp.maximum(r - 1, 0) * block_w + c
    right, down = r * block_w + jnp.minimum(c + 1, block_w - 1), jnp.minimum(r + 1, block_h - 1) * block_w + c

    def barrier():
        if not interpret:               # the interpreter runs a program's threads in order
            plt.debug_barrier()

    def scratch(k, offsets):
        return scratch_ref.at[base + k * tile + offsets]

    def run():
        load = lambda ref: plt.load(ref.at[image], mask=inside, other=0).astype(f32)   # noqa: E731
        wx, wy, grad, rho_c = (load(ref) for ref in terms)
        stored = lambda p: p if storage == jnp.float32 else p.astype(storage).astype(f32)   # noqa: E731

        def iteration(t, carry):
            u1, u2, p11, p12, p21, p22 = carry
            for k, p in enumerate((p11, p12, p21, p22)):
                plt.store(scratch(2 + k, here), p)
            barrier()
            p11_left = plt.load(scratch(2, left), mask=c >= 1, other=0.0)
            p12_up = plt.load(scratch(3, up), mask=r >= 1, other=0.0)
            p21_left = plt.load(scratch(4, left), mask=c >= 1, other=0.0)
            p22_up = plt.load(scratch(5, up), mask=r >= 1, other=0.0)
            rho = rho_c + (wx * u1 + wy * u2)
            new_u1 = _threshold(u1, wx, rho, grad, l_t) + theta * ((p11 - p11_left) + (p12 - p12_up))
            new_u2 = _threshold(u2, wy, rho, grad, l_t) + theta * ((p21 - p21_left) + (p22 - p22_up))
            change = jnp.square(new_u1 - u1) + jnp.square(new_u2 - u2)
            err_ref[program * chunk + t] = jnp.sum(jnp.where(interior, change, 0.0))
            plt.store(scratch(0, here), new_u1)
            plt.store(scratch(1, here), new_u2)
            barrier()
            u1x = jnp.where(has_right, plt.load(scratch(0, right), mask=c < block_w - 1, other=0.0) - new_u1, 0.0)
            u1y = jnp.where(has_down, plt.load(scratch(0, down), mask=r < block_h - 1, other=0.0) - new_u1, 0.0)
            u2x = jnp.where(has_right, plt.load(scratch(1, right), mask=c < block_w - 1, other=0.0) - new_u2, 0.0)
            u2y = jnp.where(has_down, plt.load(scratch(1, down), mask=r < block_h - 1, other=0.0) - new_u2, 0.0)
            norm1 = 1.0 + taut * jnp.sqrt(u1x * u1x + u1y * u1y)
            norm2 = 1.0 + taut * jnp.sqrt(u2x * u2x + u2y * u2y)
            # p is 0 outside the image (OpenCV's divergence); stored at the storage precision
            dual = [jnp.where(inside, stored(p), 0.0) for p in ((p11 + taut * u1x) / norm1, (p12 + taut * u1y) / norm1,
                                                               (p21 + taut * u2x) / norm2, (p22 + taut * u2y) / norm2)]
            return (new_u1, new_u2, *dual)

        state = tuple(load(ref) for ref in state_in)
        state = lax.fori_loop(0, limit, iteration, state)
        # Masked lanes get offsets past the end (distinct, never written): Pallas' interpreter stores
        # a masked block by gathering, selecting and scattering it, where clipped duplicates would race.
        target = jnp.where(interior, image, slots * (height * width) + here)
        for ref, value in zip(outs, state):
            plt.store(ref.at[target], value.astype(ref.dtype), mask=interior)

    if rerun:
        pl.when(limit > 0)(run)
    else:
        run()


@functools.cache
def _chunk_call(slots: int, height: int, width: int, chunk: int, block: tuple[int, int], l_t: float, theta: float,
                taut: float, storage: str, rerun: bool, interpret: bool, num_warps: int):
    """The pallas_call for these static settings (cached: a jitted caller traces it once)."""
    tiles = tile_grid(height, width, chunk, block)
    programs = slots * tiles[0] * tiles[1]
    pixels = slots * height * width
    if programs * _SCRATCH * block[0] * block[1] >= 2**31 or pixels >= 2**31:
        raise ValueError(f"{slots} slots of {height}x{width} exceed the kernel's int32 offsets: use fewer slots")
    dtype = jnp.dtype(storage)
    state = [jax.ShapeDtypeStruct((pixels,), jnp.float32)] * 2 + [jax.ShapeDtypeStruct((pixels,), dtype)] * 4
    out_shape = (*state, jax.ShapeDtypeStruct((programs * chunk,), jnp.float32),
                 jax.ShapeDtypeStruct((programs * _SCRATCH * block[0] * block[1],), jnp.float32))
    kernel = functools.partial(_kernel, height=height, width=width, block=block, chunk=chunk, tiles=tiles,
                               l_t=np.float32(l_t), theta=np.float32(theta), taut=np.float32(taut),
                               storage=dtype.type if dtype != jnp.float32 else jnp.float32,
                               rerun=rerun, interpret=interpret)
    # rerun: inputs 11..16 (the previous outputs) are updated in place, only where a slot reruns
    aliases = {11 + k: k for k in range(STATE_ARRAYS)} if rerun else {}
    return pl.pallas_call(kernel, out_shape=out_shape, grid=(slots, *tiles), input_output_aliases=aliases,
                          interpret=interpret, name="tvl1_chunk_rerun" if rerun else "tvl1_chunk",
                          compiler_params=None if interpret else plt.CompilerParams(num_warps=num_warps,
                                                                                    num_stages=1))


def default_interpret() -> bool:
    """True where JAX's default device is not a GPU (Pallas then runs in its interpreter)."""
    return jax.default_backend() not in ("gpu", "cuda", "rocm")


def make_inner_iterations(*, chunk: int, lambda_theta: float, theta: float, tau_theta: float,
                          storage: str = "float32", block: tuple[int, int] = DEFAULT_BLOCK,
                          interpret: bool | None = None, num_warps: int = DEFAULT_NUM_WARPS):
    """``chunk`` inner iterations of every ready slot, fused: the Pallas counterpart of the
    Keras-ops loop in :mod:`utils.tvl1_keras` (same arguments and results, JAX arrays).

    The returned ``inner(state, terms, ready, scaled_epsilon)`` takes the six state images
    ``(u1, u2, p11, p12, p21, p22)`` [slots, h, w] (u float32, p in ``storage``), the four warp
    terms ``(I1wx, I1wy, grad, rho_c)`` (``storage``), ``ready`` bool[slots] and the stopping
    threshold ``epsilon^2 * h * w``; it returns the new state, the iterations each slot ran
    (int32, 0..chunk) and whether it converged (OpenCV's rule, tested after every iteration).
    """
    interpret = default_interpret() if interpret is None else bool(interpret)
    block = tuple(int(b) for b in block)
    settings = dict(chunk=int(chunk), block=block, l_t=float(np.float32(lambda_theta)), theta=float(np.float32(theta)),
                    taut=float(np.float32(tau_theta)), storage=str(jnp.dtype(storage)), interpret=interpret,
                    num_warps=int(num_warps))

    def inner(state, terms, ready, scaled_epsilon):
        slots, height, width = state[0].shape
        tiles = tile_grid(height, width, chunk, block)
        flat = [jnp.reshape(x, (-1,)) for x in (*state, *terms)]
        first = _chunk_call(slots, height, width, rerun=False, **settings)
        limit = jnp.where(ready, chunk, 0).astype(jnp.int32)
        *new_state, err, _ = first(limit, *flat)
        # OpenCV's rule on the whole image: the first iteration whose summed change is small enough
        err = jnp.sum(jnp.reshape(err, (slots, tiles[0] * tiles[1], chunk)), axis=1)
        step = jnp.arange(chunk, dtype=jnp.int32)[None, :]
        below = (step < limit[:, None]) & (err <= scaled_epsilon)
        converged = jnp.any(below, axis=1)
        ran = jnp.where(converged, jnp.argmax(below, axis=1).astype(jnp.int32) + 1, limit)
        # converged before the chunk's end: run exactly ``ran`` iterations again from the chunk's start
        redo = jnp.where(converged & (ran < limit), ran, 0).astype(jnp.int32)
        second = _chunk_call(slots, height, width, rerun=True, **settings)
        new_state = second(redo, *flat, *new_state)[:STATE_ARRAYS]
        return tuple(jnp.reshape(x, (slots, height, width)) for x in new_state), ran, converged

    return inner


def lowers_to_triton(height: int = 24, width: int = 32, slots: int = 2, chunk: int = 2,
                     block: tuple[int, int] = (16, 16), storage: str = "float32",
                     gpu: str = "NVIDIA H100 80GB HBM3") -> int:
    """Lower both kernels to Triton's IR for a CUDA GPU (``gpu``: its device kind), on any
    machine, no GPU needed: raises if the kernel uses an operation Pallas cannot lower to Triton.
    Returns the module's size."""
    from jax import export
    inner = make_inner_iterations(chunk=chunk, lambda_theta=0.045, theta=0.3, tau_theta=0.25 / 0.3, storage=storage,
                                  block=block, interpret=False)
    image = lambda dtype: jax.ShapeDtypeStruct((slots, height, width), dtype)   # noqa: E731
    args = ((image(jnp.float32),) * 2 + (image(storage),) * 4, (image(storage),) * 4,
            jax.ShapeDtypeStruct((slots,), jnp.bool_), jax.ShapeDtypeStruct((), jnp.float32))
    target = getattr(plt, "CUSTOM_CALL_TARGET_NAME", "__gpu$xla.gpu.triton")      # named from JAX 0.11
    device = jax.sharding.AbstractDevice(device_kind=gpu, num_cores=None, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=device)):
        exported = export.export(jax.jit(inner), platforms=["cuda"],
                                 disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])(*args)
    text = exported.mlir_module()
    if target not in text:
        raise RuntimeError("the exported module holds no Triton kernel")
    return len(text)
