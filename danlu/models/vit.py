"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"; notes 004 §ViT).

Notation: B batch, P patch size, N = (H/P)·(W/P) patches, T = N + 1 tokens (with the class token), C channels.

An image is cut into P×P patches, each linearly projected to C (a strided convolution does exactly that), a
learned [CLS] token is prepended, learned position embeddings are added, and pre-LN encoder blocks (the shared
danlu/nn blocks, GELU FFN) mix the tokens. The final-norm [CLS] state is the image representation (eq. 4), and a
linear head classifies it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError
from danlu.models.config_checks import check_fields
from danlu.nn.blocks import EncoderBlock


@dataclass
class ViTConfig:
    image_size: int = 16
    patch_size: int = 4
    channels: int = 3
    n_embd: int = 64
    n_layer: int = 3
    n_head: int = 4
    n_classes: int = 4  # 0: no classification head (an image encoder, e.g. inside CLIP)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, "ViT config")
        if self.patch_size <= 0 or self.image_size % self.patch_size:
            raise DanluError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}; "
                "choose a patch size that divides the image size (e.g. 4 for 16x16 images)"
            )
        if self.n_embd % self.n_head:
            raise DanluError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ViTOutput:
    logits: torch.Tensor | None  # (B, n_classes)
    pooled: torch.Tensor  # (B, C): the final-norm [CLS] state
    loss: torch.Tensor | None = None


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        C, P = config.n_embd, config.patch_size
        # A P×P convolution with stride P is one linear map per non-overlapping patch (the paper's E).
        self.patch_embed = nn.Conv2d(config.channels, C, kernel_size=P, stride=P)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.randn(1, config.n_patches + 1, C) * 0.02)
        self.blocks = nn.ModuleList(
            EncoderBlock(C, config.n_head, 4 * C, activation="gelu", norm_first=True, dropout=config.dropout)
            for _ in range(config.n_layer)
        )
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, config.n_classes) if config.n_classes > 0 else None

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, channels, H, W) -> the final-norm token states (B, T, C)."""
        cfg = self.config
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (
            cfg.channels,
            cfg.image_size,
            cfg.image_size,
        ):
            raise DanluError(
                f"pixel_values must be (B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(pixel_values.shape)}"
            )
        x = self.patch_embed(pixel_values)  # (B, C, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ViTOutput:
        pooled = self.encode(pixel_values)[:, 0]  # (B, C)
        logits = self.head(pooled) if self.head is not None else None
        loss = None
        if labels is not None:
            if logits is None:
                raise DanluError("this ViT has no classification head (n_classes=0); it cannot take labels")
            loss = F.cross_entropy(logits, labels)
        return ViTOutput(logits, pooled, loss)

    @torch.no_grad()
    def predict(self, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class indices (B,) for a batch of images, in eval mode."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [
            self(pixel_values[i : i + batch_size].to(device)).logits.argmax(-1).cpu()
            for i in range(0, len(pixel_values), batch_size)
        ]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
