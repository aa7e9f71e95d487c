"""Spatial Vision Aggregator (SVA), the Cambrian connector LongVU uses (paper Sec. 3.2).

SigLIP and DINOv2 features (each ``[N, 576, C]``, a 24x24 grid) are projected to
``vision_hidden_size`` (vh) and fused by a grid of 12x12 learned queries: query
cell (i, j) attends only to the 2x2 patch of each tower's grid that it covers, so
every cell is its own batch element with one query and 4 + 4 keys.  Three such
layers, then ``mm_projector`` maps vh to the LLM width.  The low-res 8x8 map is
the 12x12 sampler output resampled bilinearly *before* ``mm_projector``.

Module and parameter names follow the released checkpoints
(``model.vision_sampler_0.layers.{l}.cross_attn.k_proj_0.0.weight``, ...), so the
weights load by name.

Notation:
    N: frames, vh: vision_hidden_size, H: LLM hidden size,
    Q = q*q: query cells (12x12), r = aux_side // q: cell size (2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LongVUConfig

# The sampler's attention batch is one element per query cell (frames x 144).  CUDA's
# memory-efficient SDPA kernel before torch 2.8 fails above 65,535 batch elements
# (encode_chunk >= 456 frames), so larger batches are split by frames.
MAX_ATTENTION_BATCH = 65_535


def _ln_linear(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out, bias=False))


class MultiKVCrossAttention(nn.Module):
    """Queries attend to the concatenated keys of every tower (LayerNorm before each projection)."""

    def __init__(self, dim: int, num_kv: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"vision_hidden_size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.num_kv = num_kv
        self.q_proj = _ln_linear(dim, dim)
        for i in range(num_kv):
            self.add_module(f"k_proj_{i}", _ln_linear(dim, dim))
            self.add_module(f"v_proj_{i}", _ln_linear(dim, dim))
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, queries: torch.Tensor, kvs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            queries: ``[B, 1, vh]`` (B = N*Q cells)
            kvs: per tower ``[B, r*r, vh]``
            mask: ``[B, num_kv*r*r]`` bool, True = attend
        Returns:
            ``[B, 1, vh]``
        """
        b, q_len, dim = queries.shape
        hd = dim // self.num_heads
        q = self.q_proj(queries)
        k = torch.cat([getattr(self, f"k_proj_{i}")(x) for i, x in enumerate(kvs)], dim=1)
        v = torch.cat([getattr(self, f"v_proj_{i}")(x) for i, x in enumerate(kvs)], dim=1)
        q = q.view(b, q_len, self.num_heads, hd).transpose(1, 2)  # (B, nh, 1, hd)
        k = k.view(b, -1, self.num_heads, hd).transpose(1, 2)  # (B, nh, 8, hd)
        v = v.view(b, -1, self.num_heads, hd).transpose(1, 2)
        attn_mask = mask.view(b, 1, 1, -1).expand(-1, -1, q_len, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, q_len, dim)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_hidden, bias=False)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class SVALayer(nn.Module):
    """One cross-attention layer of the sampler (the reference's VisionCrossAttentionLayer)."""

    def __init__(self, dim: int, num_kv: int, cell: int, num_heads: int) -> None:
        super().__init__()
        self.num_kv = num_kv
        self.proj_context = nn.Linear(dim, dim, bias=False)
        self.proj_in = nn.Linear(2 * dim, dim, bias=False)
        self.proj_out = MLP(dim, dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.cross_attn = MultiKVCrossAttention(dim, num_kv, num_heads)
        for i in range(num_kv):
            self.register_parameter(f"pos_embed_{i}", nn.Parameter(torch.zeros(cell * cell, dim)))

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, kvs: list[torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        residual = queries
        x = self.proj_in(torch.cat([queries, self.proj_context(context)], -1))  # (B, 1, vh)
        kvs = [kv + getattr(self, f"pos_embed_{i}")[None].to(kv.dtype) for i, kv in enumerate(kvs)]
        x = x + self.cross_attn(x, kvs, mask)
        x = self.proj_out(self.norm(x))
        return x + residual


class VisionSampler(nn.Module):
    def __init__(self, dim: int, num_kv: int, cell: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([SVALayer(dim, num_kv, cell, num_heads) for _ in range(depth)])

    def forward(self, queries, context, kvs, mask):
        for layer in self.layers:
            queries = layer(queries, context, kvs, mask)
        return queries


def unpad_window(rows: int, cols: int, image_hw: tuple[int, int], *, fix_orientation: bool = False):
    """Rows and columns of a ``rows x cols`` grid that hold the frame (not the square padding).

    Mirrors the reference's ``unpad_image``, which is called with ``(H, W)`` but reads
    it as ``(width, height)``: for a landscape frame it keeps the middle *columns*
    (cropping content, keeping padding rows).  ``fix_orientation=True`` reads the
    size the right way round.

    Returns:
        ``(row_slice, col_slice)``
    """
    a, b = image_hw  # the reference passes (H, W) ...
    ow, oh = (b, a) if fix_orientation else (a, b)  # ... and unpacks (width, height)
    if ow / oh > cols / rows:
        new_h = int(oh * (cols / ow))
        pad = (rows - new_h) // 2
        return slice(pad, rows - pad), slice(0, cols)
    new_w = int(ow * (rows / oh))
    pad = (cols - new_w) // 2
    return slice(0, rows), slice(pad, cols - pad)


def key_mask(
    aux_side: int, q_side: int, image_hw: tuple[int, int], *, fix_orientation: bool = False, device=None
) -> torch.Tensor:
    """Per-cell key mask ``[q*q, r*r]`` (True = attend) for one frame size, on ``device``.

    Patches of the 24x24 grid that fall in the square padding are masked (the
    reference's ``unmask_attention_mask``, same orientation quirk as
    :func:`unpad_window`); a cell with every key masked attends to all of them.
    """
    r = aux_side // q_side
    m = torch.ones(aux_side, aux_side, dtype=torch.bool, device=device)
    a, b = image_hw
    ow, oh = (b, a) if fix_orientation else (a, b)
    if ow / oh > 1.0:
        pad = (aux_side - int(oh * (aux_side / ow))) // 2
        if pad > 0:
            m[:pad, :] = False
            m[-pad:, :] = False
    else:
        pad = (aux_side - int(ow * (aux_side / oh))) // 2
        if pad > 0:
            m[:, :pad] = False
            m[:, -pad:] = False
    m = m.view(q_side, r, q_side, r).permute(0, 2, 1, 3).reshape(q_side * q_side, r * r)
    return m | ~m.any(-1, keepdim=True)  # a fully masked cell attends to all (no data-dependent indexing: no sync)


def to_cells(x: torch.Tensor, q_side: int) -> torch.Tensor:
    """``[N, S*S, C]`` grid -> ``[N*q*q, r*r, C]``: one row per query cell, keys row-major inside."""
    n, t, c = x.shape
    side = int(round(t**0.5))
    r = side // q_side
    x = x.view(n, q_side, r, q_side, r, c).permute(0, 1, 3, 2, 4, 5)  # (N, q, q, r, r, C)
    return x.reshape(n * q_side * q_side, r * r, c)


class SVAConnector(nn.Module):
    """Fuses the two towers' features into a per-frame token grid for the LLM.

    Holds every connector parameter of the checkpoint: ``mm_projector_aux_{i}``,
    ``vision_sampler_0``, ``vision_query``, ``mm_projector`` and ``image_newline``.  It keeps
    no config: the grid sizes are the architecture's, and ``fix_orientation`` (the
    ``fix_unpad_orientation`` setting) comes with each call.
    """

    def __init__(self, cfg: LongVUConfig, tower_widths: list[int]) -> None:
        super().__init__()
        vh, h = cfg.vision_hidden_size, cfg.hidden_size
        # Only the architecture is kept (fixed by the weights; no view of the model may change it).
        # Run-time settings are passed to each call from the model's one config, so none can go stale.
        self.q_side, self.aux_side, self.lowres_side = cfg.high_side, cfg.aux_side, cfg.lowres_token
        self.num_towers = len(tower_widths)
        for i, width in enumerate(tower_widths):
            self.add_module(
                f"mm_projector_aux_{i}",
                nn.Sequential(nn.Linear(width, vh), nn.GELU(), nn.Linear(vh, vh), nn.LayerNorm(vh)),
            )
        cell = cfg.aux_side // cfg.high_side
        self.vision_sampler_0 = VisionSampler(vh, self.num_towers, cell, cfg.connector_depth, cfg.sva_num_heads)
        self.vision_query = nn.Parameter(torch.zeros(1, vh))
        self.mm_projector = nn.Sequential(nn.Linear(vh, h), nn.GELU(), nn.Linear(h, h))
        self.image_newline = nn.Parameter(torch.zeros(h))

    def project_aux(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tower ``[N, 576, C_i]`` -> ``[N, 576, vh]``."""
        return [getattr(self, f"mm_projector_aux_{i}")(f) for i, f in enumerate(features)]

    def sample(self, aux: list[torch.Tensor], image_hw: tuple[int, int], *, fix_orientation: bool) -> torch.Tensor:
        """Run the sampler on projected features (order: SigLIP, DINOv2).

        Args:
            aux: per tower ``[N, 576, vh]``
            image_hw: frame size ``(H, W)``, used for the key masks
            fix_orientation: the config's ``fix_unpad_orientation`` (see :func:`key_mask`)
        Returns:
            ``[N, Q, vh]`` with Q = image_token_len (12x12, row-major)
        """
        n, _, vh = aux[0].shape
        q_side = self.q_side
        nq = q_side * q_side
        per_call = max(1, MAX_ATTENTION_BATCH // nq)
        if n > per_call:  # every cell is its own batch element: frames split without changing a number
            parts = [[a[i : i + per_call] for a in aux] for i in range(0, n, per_call)]
            return torch.cat([self.sample(part, image_hw, fix_orientation=fix_orientation) for part in parts])
        context = aux[0].mean(1)  # (N, vh) global context from SigLIP
        context = context[:, None, None, :].expand(n, nq, 1, vh).reshape(n * nq, 1, vh)
        queries = self.vision_query[0].view(1, 1, vh).expand(n * nq, 1, vh).to(aux[0].dtype)
        kvs = [to_cells(a, q_side) for a in aux]  # each (N*Q, r*r, vh)
        m = key_mask(self.aux_side, q_side, image_hw, fix_orientation=fix_orientation, device=aux[0].device)
        mask = torch.cat([m] * len(aux), dim=-1)  # (Q, towers*r*r)
        mask = mask.repeat(n, 1)
        out = self.vision_sampler_0(queries, context, kvs, mask)  # (N*Q, 1, vh)
        return out.view(n, nq, vh)

    def lowres(self, sampled: torch.Tensor) -> torch.Tensor:
        """``[N, Q, vh]`` 12x12 -> ``[N, L*L, vh]`` (L = lowres_token) by bilinear interpolation."""
        n, nq, vh = sampled.shape
        q, lo = self.q_side, self.lowres_side
        x = sampled.permute(0, 2, 1).reshape(n, vh, q, q)
        x = F.interpolate(x.float(), size=(lo, lo), mode="bilinear", align_corners=False).to(sampled.dtype)
        return x.permute(0, 2, 3, 1).reshape(n, lo * lo, vh)

    def project(self, sampled: torch.Tensor) -> torch.Tensor:
        """``[N, side*side, vh]`` -> ``[N, side, side, H]`` through ``mm_projector``."""
        n, t, _ = sampled.shape
        side = int(round(t**0.5))
        return self.mm_projector(sampled).view(n, side, side, -1)

    def unpad_with_newlines(
        self, grid: torch.Tensor, image_hw: tuple[int, int], *, fix_orientation: bool
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Crop a projected grid to the frame and append a newline token to every row.

        Args:
            grid: ``[N, side, side, H]``
            image_hw: the size the reference's unpad sees (see :func:`unpad_window`)
            fix_orientation: the config's ``fix_unpad_orientation``
        Returns:
            ``[N, rows*(cols+1), H]`` and ``(rows, cols)``
        """
        n, side, _, _ = grid.shape
        rs, cs = unpad_window(side, side, image_hw, fix_orientation=fix_orientation)
        x = grid[:, rs, cs]
        rows, cols = x.shape[1], x.shape[2]
        newline = self.image_newline.view(1, 1, 1, -1).expand(n, rows, 1, -1).to(x.dtype)
        x = torch.cat([x, newline], dim=2)  # (N, rows, cols+1, H)
        return x.reshape(n, rows * (cols + 1), -1), (rows, cols)
