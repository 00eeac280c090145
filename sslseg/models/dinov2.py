"""DINOv2's ViT as UniMatch V2 uses it (Oquab et al., "DINOv2", 2023; Yang et al., "UniMatch V2", 2024), built
from timm's transformer blocks.

The encoder (facebookresearch/dinov2 `dinov2/models/vision_transformer.py`, as UniMatch-V2's
`model/backbone/dinov2.py` builds it):

- 14x14 patches -> tokens, a class token in front, a learned position embedding for a 37x37 grid (518 px);
- pre-norm blocks: x + ls1(attn(norm1(x))), x + ls2(mlp(norm2(x))), LayerNorm eps 1e-6, LayerScale (`ls*.gamma`),
  qkv/proj/MLP biases; GELU MLP x4 for S/B/L, SwiGLU for G (hidden 4096: DINOv2's 2/3 x 4 x 1536 rounded to 8);
- four intermediate outputs (UniMatch-V2's `intermediate_layer_idx`: S/B [2, 5, 8, 11], L [4, 11, 17, 23],
  G [9, 19, 29, 39]), each through the final LayerNorm, class token dropped, returned as (B, C, H/14, W/14) maps
  for the decoder (DPT reads all four).

Inputs of any size whose sides are multiples of the patch size. The position embedding is resized as DINOv2
does, not as timm does: bicubic, no antialias, by the scale factor ((H/14 + 0.1)/37, (W/14 + 0.1)/37) rather than
to the target size (DINOv2's `interpolate_offset` 0.1 against rounding of the output size; the offset moves the
sampling grid, so the values differ from a size-based resize), in float32, and left as it is at the pretraining
grid itself (518 x 518).

Weights: Meta's released `dinov2_vit{s,b,l,g}14_pretrain.pth` load strictly (key formats `dinov2`, and
`dinov2_swiglu` for G, in `pretrained.py`): the keys are this module's (`cls_token`, `pos_embed`, `mask_token`,
`patch_embed.proj.*`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*`,
`norm.*`) except ViT-G's SwiGLU, which Meta names
`mlp.w12` (the packed gate and value projections) and `mlp.w3` where timm names them `mlp.fc1` and `mlp.fc2`
(same tensors, same order: silu(first half) x second half). `pretrained: timm:<name>` instead fetches timm's
published DINOv2 weights by name (network access; cached by huggingface_hub), see `pretrained.py`.

Kept from the release although segmentation never reads it: `mask_token` (DINOv2's masked-image-modelling token),
so that Meta's file loads strictly; it is frozen (requires_grad False: it would never get a gradient).

Options: `frozen` (UniMatch V2's `lock_backbone`, its table07 ablation: no encoder parameter trains),
`checkpointing` (keep only each block's input and recompute the block in the backward pass: for L/G at large
crops, activation memory for compute). Attention is timm's fused `scaled_dot_product_attention`; bf16 comes from
the trainer's precision (`trainer.precision=bf16-mixed`, the default on GPU), the position embedding is resized in
float32 whatever the autocast dtype (as DINOv2).

Differences from the release:

- Sides that are not multiples of the patch size stop the run with one line naming the option; the release's patch
  embedding silently drops the remainder pixels and its logits come back at the truncated size.
- Without effect on the output: only the blocks up to the last intermediate layer run (the release runs all of
  them and discards the rest; for the four DINOv2 sizes the last layer is the last block).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed, SwiGLUPacked
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from sslseg.errors import UserError

INTERPOLATE_OFFSET = 0.1  # DINOv2's `interpolate_offset` (UniMatch V2 keeps it; DINOv2 with registers uses 0)


def swiglu_hidden(embed_dim: int, mlp_ratio: float = 4.0) -> int:
    """DINOv2's SwiGLU width: 2/3 of the GELU MLP's, rounded up to a multiple of 8 (1536 -> 4096)."""
    return (int(embed_dim * mlp_ratio * 2 / 3) + 7) // 8 * 8


class DINOv2ViT(nn.Module):
    """DINOv2's ViT returning the four intermediate feature maps a DPT head reads (module docstring)."""

    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 6, ffn: str = "mlp",
                 patch_size: int = 14, img_size: int = 518, layers: Sequence[int] = (2, 5, 8, 11),
                 frozen: bool = False, checkpointing: bool = False, init_values: float = 1.0):
        super().__init__()
        layers = tuple(int(i) for i in layers)
        if len(layers) != 4 or list(layers) != sorted(set(layers)) or not 0 <= layers[0] <= layers[-1] < depth:
            raise UserError(f"backbone.layers must be 4 increasing block indices below depth {depth}, "
                            f"got {list(layers)}")
        if ffn not in ("mlp", "swiglu"):
            raise UserError(f"backbone.ffn must be mlp or swiglu, got {ffn!r}")
        if img_size % patch_size:
            raise UserError(f"backbone.img_size {img_size} is not a multiple of the patch size {patch_size}")
        self.patch_size, self.layers, self.checkpointing = patch_size, layers, checkpointing
        self.weights_format = "dinov2_swiglu" if ffn == "swiglu" else "dinov2"  # Meta's key names (pretrained.py)
        self.grid = img_size // patch_size  # the position embedding's grid (37 for DINOv2's 518 px)
        self.channels = (embed_dim,) * 4

        self.patch_embed = PatchEmbed(img_size=None, patch_size=patch_size, in_chans=3, embed_dim=embed_dim,
                                      strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)  # unused (docstring)
        if ffn == "mlp":
            mlp = dict(mlp_ratio=4.0, mlp_layer=Mlp, act_layer=nn.GELU)
        else:  # timm's packed SwiGLU takes the width of both halves; + 0.5 so that int() cannot round it down
            mlp = dict(mlp_ratio=(2 * swiglu_hidden(embed_dim) + 0.5) / embed_dim, mlp_layer=SwiGLUPacked,
                       act_layer=nn.SiLU)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, qkv_bias=True, proj_bias=True, init_values=init_values, norm_layer=norm, **mlp)
            for _ in range(depth))
        for block in self.blocks:
            block.attn.fused_attn = True  # F.scaled_dot_product_attention (flash / memory-efficient kernels)
        self.norm = norm(embed_dim)
        self._init_weights()
        if frozen:
            self.requires_grad_(False)

    def _init_weights(self) -> None:
        """DINOv2's initialisation (random-init runs only; pretrained weights overwrite it)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h*w, C): the class token's embedding and the patch grid's, resized from the pretraining grid by
        the scale factor (h + 0.1)/grid, (w + 0.1)/grid, bicubic without antialias, in float32 (DINOv2)."""
        pos = self.pos_embed.float()
        if (h, w) == (self.grid, self.grid):
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        scale = ((h + INTERPOLATE_OFFSET) / self.grid, (w + INTERPOLATE_OFFSET) / self.grid)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=False)
        assert patch_pos.shape[-2:] == (h, w), (patch_pos.shape, h, w)  # floor(grid x scale) is the target size
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch, _, height, width = x.shape
        if height % self.patch_size or width % self.patch_size:
            raise UserError(f"the ViT backbone reads images whose sides are multiples of its patch size "
                            f"{self.patch_size}, got {height}x{width}: set dataset.crop_size (and the eval crop) "
                            f"to a multiple of {self.patch_size}")
        h, w = height // self.patch_size, width // self.patch_size
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(h, w).to(tokens.dtype)
        features = []
        for i, block in enumerate(self.blocks[: self.layers[-1] + 1]):
            if self.checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if i in self.layers:
                patches = self.norm(tokens)[:, 1:]  # the final LayerNorm on each, class token dropped
                features.append(patches.transpose(1, 2).reshape(batch, -1, h, w))
        return features
