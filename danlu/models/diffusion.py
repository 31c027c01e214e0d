"""Denoising diffusion (Ho et al. 2020, DDPM; Song et al. 2021, DDIM; Ho & Salimans 2022, classifier-free
guidance; notes 004 §diffusion) with a small conditional U-Net, for the picture world.

Notation: B batch, C channels, H = W image size, n_steps the number of noise levels (T in the papers; renamed to
keep T for sequence length elsewhere in danlu), ᾱ_t = ∏_{s<=t} (1 - β_s).

Forward process (closed form, DDPM eq. 4): q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I).
The network ε_θ(x_t, t, c) predicts the noise; the loss is ‖ε - ε_θ‖² (DDPM eq. 14, "simple" loss).
Conditioning c is a shape and a colour, each replaced by a learned "null" index with probability p_uncond in
training, so one network is both conditional and unconditional; sampling mixes them:
    ε̂ = ε_θ(x_t, ∅) + w · (ε_θ(x_t, c) - ε_θ(x_t, ∅))      (w = 0: unconditional, 1: conditional, >1: guided).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError
from danlu.models.config_checks import check_fields


@dataclass
class DiffusionConfig:
    image_size: int = 16
    channels: int = 3
    base: int = 32  # U-Net width at full resolution; 2·base below
    # condition vocabularies; the defaults are the picture world's 4 shapes and 5 colours (data/pictures.py)
    n_shapes: int = 4
    n_colours: int = 5
    n_steps: int = 1000
    beta_start: float = 1e-4  # DDPM's linear schedule
    beta_end: float = 0.02
    p_uncond: float = 0.1  # probability each condition is dropped to "null" in training

    def __post_init__(self) -> None:
        check_fields(self, "diffusion config")
        if self.image_size % 4:
            raise DanluError(
                f"image_size {self.image_size} must be divisible by 4 (the U-Net halves it twice)"
            )
        if not 0 < self.beta_start < self.beta_end < 1:
            raise DanluError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")

    def to_dict(self) -> dict:
        return asdict(self)


def linear_schedule(n_steps: int, beta_start: float, beta_end: float) -> dict[str, torch.Tensor]:
    """β_t linear in t (DDPM §4) and the derived α_t = 1 - β_t, ᾱ_t = ∏ α_s, all (n_steps,)."""
    betas = torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)
    alphas = 1 - betas
    alpha_bars = torch.cumprod(alphas, 0)
    return {"betas": betas.float(), "alphas": alphas.float(), "alpha_bars": alpha_bars.float()}


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bars: torch.Tensor
) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε, a draw from q(x_t | x_0) (DDPM eq. 4). x0, noise (B, C, H, W); t (B,)."""
    ab = alpha_bars[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, as DDPM uses). t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)  # (half,)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the embedding, twice, with a residual (the DDPM U-Net's block)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        h = h + self.emb(emb)[:, :, None, None]  # the time + condition embedding as a per-channel shift
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A two-level U-Net: H -> H/2 -> H/4 and back, with skip connections."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        c, c2, e = config.base, 2 * config.base, 4 * config.base
        self.time_mlp = nn.Sequential(nn.Linear(c, e), nn.SiLU(), nn.Linear(e, e))
        self.shape_embed = nn.Embedding(config.n_shapes + 1, e)  # the last index is "no shape"
        self.colour_embed = nn.Embedding(config.n_colours + 1, e)  # the last index is "no colour"
        self.inp = nn.Conv2d(config.channels, c, 3, padding=1)
        self.down1 = ResBlock(c, c, e)
        self.pool1 = nn.Conv2d(c, c2, 3, stride=2, padding=1)
        self.down2 = ResBlock(c2, c2, e)
        self.pool2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.mid = ResBlock(c2, c2, e)
        self.up2 = ResBlock(2 * c2, c2, e)
        self.up1 = ResBlock(c2 + c, c, e)
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, config.channels, 3, padding=1))
        self.base = c

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, shape: torch.Tensor, colour: torch.Tensor
    ) -> torch.Tensor:
        """x (B, C, H, W), t (B,), shape (B,), colour (B,) -> predicted noise (B, C, H, W)."""
        emb = (
            self.time_mlp(timestep_embedding(t, self.base))
            + self.shape_embed(shape)
            + self.colour_embed(colour)
        )
        h1 = self.down1(self.inp(x), emb)  # (B, c, H, W)
        h2 = self.down2(self.pool1(h1), emb)  # (B, 2c, H/2, W/2)
        h = self.mid(self.pool2(h2), emb)  # (B, 2c, H/4, W/4)
        h = F.interpolate(h, scale_factor=2, mode="nearest")  # (B, 2c, H/2, W/2)
        h = self.up2(torch.cat([h, h2], 1), emb)  # (B, 2c, H/2, W/2)
        h = F.interpolate(h, scale_factor=2, mode="nearest")  # (B, 2c, H, W)
        h = self.up1(torch.cat([h, h1], 1), emb)  # (B, c, H, W)
        return self.out(h)


@dataclass
class DiffusionOutput:
    loss: torch.Tensor
    noise_pred: torch.Tensor


class Diffusion(nn.Module):
    """The U-Net plus its noise schedule; `forward` is one training step's loss."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(config)
        for name, value in linear_schedule(config.n_steps, config.beta_start, config.beta_end).items():
            self.register_buffer(name, value, persistent=False)

    def null_shape(self, B: int, device: torch.device) -> torch.Tensor:
        return torch.full((B,), self.config.n_shapes, dtype=torch.long, device=device)

    def null_colour(self, B: int, device: torch.device) -> torch.Tensor:
        return torch.full((B,), self.config.n_colours, dtype=torch.long, device=device)

    def forward(
        self,
        pixel_values: torch.Tensor,
        shape: torch.Tensor,
        colour: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> DiffusionOutput:
        """pixel_values (B, C, H, W) in [-1, 1]; a random t and ε unless given. -> the ε-prediction MSE."""
        B, device = pixel_values.shape[0], pixel_values.device
        t = torch.randint(0, self.config.n_steps, (B,), device=device) if t is None else t
        noise = torch.randn_like(pixel_values) if noise is None else noise
        if (
            self.training and self.config.p_uncond > 0
        ):  # classifier-free guidance: learn p(x) alongside p(x|c)
            shape = torch.where(
                torch.rand(B, device=device) < self.config.p_uncond, self.null_shape(B, device), shape
            )
            colour = torch.where(
                torch.rand(B, device=device) < self.config.p_uncond, self.null_colour(B, device), colour
            )
        x_t = q_sample(pixel_values, t, noise, self.alpha_bars)
        noise_pred = self.unet(x_t, t, shape, colour)
        return DiffusionOutput(F.mse_loss(noise_pred, noise), noise_pred)

    def guided_noise(
        self, x_t: torch.Tensor, t: int, shape: torch.Tensor, colour: torch.Tensor, guidance: float
    ) -> torch.Tensor:
        """ε̂ = ε(∅) + w (ε(c) - ε(∅)) (Ho & Salimans 2022, eq. 6), both halves in one batched call."""
        B, device = x_t.shape[0], x_t.device
        tt = torch.full((2 * B,), t, dtype=torch.long, device=device)
        shapes = torch.cat([shape, self.null_shape(B, device)])
        colours = torch.cat([colour, self.null_colour(B, device)])
        eps_cond, eps_uncond = self.unet(torch.cat([x_t, x_t]), tt, shapes, colours).chunk(2)
        return eps_uncond + guidance * (eps_cond - eps_uncond)

    @torch.no_grad()
    def sample(
        self,
        shape: torch.Tensor,
        colour: torch.Tensor,
        guidance: float = 2.0,
        method: str = "ddim",
        ddim_steps: int = 50,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw len(shape) images (B, C, H, W) in [-1, 1]. `shape`/`colour` hold class indices, or the null index
        (n_shapes / n_colours) to leave that attribute free. method: "ddpm" (ancestral, every step) or "ddim"."""
        if guidance < 0:
            raise DanluError(
                f"guidance scale must be >= 0 (0: unconditional, 1: conditional), got {guidance}"
            )
        if method not in ("ddpm", "ddim"):
            raise DanluError(f"sampling method must be ddpm or ddim, got {method!r}")
        cfg, device = self.config, self.alpha_bars.device
        if not 0 < ddim_steps <= cfg.n_steps:
            raise DanluError(f"ddim_steps must be in 1..{cfg.n_steps}, got {ddim_steps}")
        was_training = self.training
        self.eval()
        shape, colour = shape.to(device), colour.to(device)
        B = shape.shape[0]
        x = torch.randn(B, cfg.channels, cfg.image_size, cfg.image_size, generator=generator).to(device)
        if method == "ddpm":
            for t in reversed(range(cfg.n_steps)):
                eps = self.guided_noise(x, t, shape, colour, guidance)
                beta, alpha, ab = self.betas[t], self.alphas[t], self.alpha_bars[t]
                # μ_θ = (x_t - β_t / √(1 - ᾱ_t) ε̂) / √α_t (DDPM eq. 11); σ_t² = β_t (DDPM §3.2).
                x = (x - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()
                if t > 0:
                    x = x + beta.sqrt() * torch.randn(x.shape, generator=generator).to(device)
        else:
            times = torch.linspace(cfg.n_steps - 1, 0, ddim_steps).round().long().tolist()
            for i, t in enumerate(times):
                eps = self.guided_noise(x, t, shape, colour, guidance)
                ab = self.alpha_bars[t]
                ab_prev = (
                    self.alpha_bars[times[i + 1]] if i + 1 < len(times) else torch.tensor(1.0, device=device)
                )
                # Deterministic DDIM (η = 0, Song et al. 2021 eq. 12): predict x_0, then step to t_prev.
                x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
                x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        self.train(was_training)
        return x.clamp(-1, 1)
