"""CTransPath (Wang et al. 2022; CHIEF's release): timm's Swin-T/4 with a convolutional stem, and the mapping of
its checkpoint, saved by timm 0.5.4, onto timm 1.x.

The stem (the paper's ``ConvStem``): two 3×3 stride-2 convolutions with BatchNorm and ReLU (3 → 12 → 24
channels) and a 1×1 convolution to the 96-d embedding, then LayerNorm; together a 4× downsampling like the
patch embedding it replaces. The embedding is the Swin's average-pooled final tokens, 768-d.

timm 0.5.4 kept a stage's patch merging at the end of stage ``i`` (``layers.i.downsample``); timm 1.x puts it at
the start of stage ``i + 1`` with the same weights and the same 2×2 neighbour order. The 0.5.4 file also stores
the derived buffers ``relative_position_index`` and ``attn_mask``, which timm 1.x recomputes: they are dropped.
"""

from __future__ import annotations

import re

from torch import Tensor, nn


class ConvStem(nn.Module):
    """The CTransPath stem as a timm ``embed_layer``: (B, 3, H, W) → (B, H/4, W/4, embed_dim) (NHWC)."""

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 96, norm_layer: type[nn.Module] | None = None, **_: object):
        super().__init__()
        if patch_size != 4:
            raise ValueError(f"ConvStem downsamples 4×, not {patch_size}×")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size, self.patch_size = size, (patch_size, patch_size)
        self.grid_size = (size[0] // patch_size, size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: list[nn.Module] = []
        cin, cout = in_chans, embed_dim // 8
        for _stage in range(2):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin, cout = cout, cout * 2
        layers.append(nn.Conv2d(cin, embed_dim, 1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def _shift_downsample(state: dict[str, Tensor], by: int) -> dict[str, Tensor]:
    return {_DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + by}.downsample.", k): v for k, v in state.items()}


def from_timm054(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A timm-0.5.4 CTransPath state dict (derived buffers already dropped) → timm 1.x names."""
    return _shift_downsample(state, +1)


def to_timm054(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`from_timm054` (what the shipped file holds, less the derived buffers)."""
    return _shift_downsample(state, -1)
