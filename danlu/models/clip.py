"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"; notes 000,
004 §CLIP): an image encoder and a text encoder trained so that matching image-caption pairs have the highest
cosine similarity in a batch.

Notation: B batch (pairs), T text length, C channels, D the shared embedding size.

Image: a ViT ([CLS] state) -> linear projection to D. Text: token + learned position embeddings, pre-LN encoder
blocks with a padding mask, the mean of the real tokens' final states -> linear projection to D. Both are
L2-normalised; logits = exp(t) · I Tᵀ with a learned temperature t (initialised to log(1/0.07), clamped at
log 100 as in the paper). The loss is the symmetric InfoNCE: the mean of the image->text and text->image
cross-entropies with the diagonal as targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from danlu.errors import DanluError
from danlu.models.config_checks import check_fields, config_from_dict
from danlu.models.vit import ViT, ViTConfig
from danlu.nn.attention import padding_mask
from danlu.nn.blocks import EncoderBlock

DEFAULT_TEMPLATES = ["a photo of a {label}", "a picture of a {label}", "a {label}", "an image of a {label}"]


@dataclass
class CLIPConfig:
    vision: ViTConfig = field(default_factory=lambda: ViTConfig(n_classes=0))
    vocab_size: int = 512
    block_size: int = 32  # the longest caption in tokens
    text_embd: int = 64
    text_layer: int = 2
    text_head: int = 4
    embed_dim: int = 64  # D, the shared space
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = config_from_dict(ViTConfig, self.vision, "CLIP config's vision")
        if not isinstance(self.vision, ViTConfig):
            raise DanluError(f"bad CLIP config: vision should be an object, got {self.vision!r}"[:200])
        check_fields(self, "CLIP config")
        if self.text_embd % self.text_head:
            raise DanluError(f"text_embd {self.text_embd} is not divisible by text_head {self.text_head}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CLIPOutput:
    logits_per_image: torch.Tensor  # (B, B): row i scores image i against every caption
    image_embeds: torch.Tensor  # (B, D), unit length
    text_embeds: torch.Tensor  # (B, D), unit length
    loss: torch.Tensor | None = None


def clip_loss(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of B matched pairs (CLIP's pseudocode, Radford et al. 2021, fig. 3):
    logits = exp(t)·I·Tᵀ; loss = (CE(logits, diag) + CE(logitsᵀ, diag)) / 2."""
    logits = logit_scale.exp() * image_embeds @ text_embeds.T  # (B, B)
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class TextEncoder(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        C = config.text_embd
        self.tok_embed = nn.Embedding(config.vocab_size, C)
        self.pos_embed = nn.Parameter(torch.randn(1, config.block_size, C) * 0.02)
        self.blocks = nn.ModuleList(
            EncoderBlock(C, config.text_head, 4 * C, activation="gelu", norm_first=True)
            for _ in range(config.text_layer)
        )
        self.norm = nn.LayerNorm(C)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B, T) -> the mean of the real tokens' states (B, C)."""
        T = input_ids.shape[1]
        x = self.tok_embed(input_ids) + self.pos_embed[:, :T]  # (B, T, C)
        mask = padding_mask(attention_mask)  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        m = attention_mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        return (x * m).sum(1) / m.sum(1).clamp(min=1)  # (B, C)


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = ViT(config.vision)
        self.text = TextEncoder(config)
        self.image_proj = nn.Linear(config.vision.n_embd, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(config.text_embd, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> unit-length embeddings (B, D)."""
        return F.normalize(self.image_proj(self.vision(pixel_values).pooled), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids and mask -> unit-length embeddings (B, D)."""
        if input_ids.shape[1] > self.config.block_size:
            raise DanluError(
                f"text of {input_ids.shape[1]} tokens exceeds CLIP's block_size {self.config.block_size}; "
                "shorten the caption or train with a larger block_size"
            )
        return F.normalize(self.text_proj(self.text(input_ids, attention_mask)), dim=-1)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> CLIPOutput:
        image_embeds = self.encode_image(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask)
        # The paper clamps the temperature so logits never exceed 100 (training stability).
        scale = self.logit_scale.clamp(max=math.log(100))
        loss = clip_loss(image_embeds, text_embeds, scale)
        return CLIPOutput(scale.exp() * image_embeds @ text_embeds.T, image_embeds, text_embeds, loss)


def tokenize_captions(tokenizer, texts: Sequence[str], block_size: int, pad_id: int = 0):
    """Encode and right-pad captions -> (input_ids, attention_mask), each (B, T) with T the longest caption."""
    ids = [tokenizer.encode(t)[:block_size] for t in texts]
    T = max((len(x) for x in ids), default=1) or 1
    input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        attention_mask[i, : len(x)] = 1
    return input_ids, attention_mask


@torch.no_grad()
def class_embeddings(model: CLIP, tokenizer, labels: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """One unit-length text embedding per label: the mean over prompt templates, renormalised (the paper's
    prompt ensembling, §3.1.4). -> (n_labels, D)."""
    if not labels:
        raise DanluError("zero-shot classification needs at least one label; the label list is empty")
    if not templates or any("{label}" not in t for t in templates):
        raise DanluError(f"every prompt template must contain '{{label}}', got {list(templates)}")
    device = model.logit_scale.device
    texts = [t.format(label=label) for label in labels for t in templates]
    ids, mask = tokenize_captions(tokenizer, texts, model.config.block_size, model.config.pad_token_id)
    emb = model.encode_text(ids.to(device), mask.to(device))  # (n_labels · n_templates, D)
    emb = emb.view(len(labels), len(templates), -1).mean(1)  # (n_labels, D)
    return F.normalize(emb, dim=-1)


@torch.no_grad()
def zero_shot_classify(
    model: CLIP,
    tokenizer,
    pixel_values: torch.Tensor,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 256,
) -> torch.Tensor:
    """The index into `labels` of the best-matching label for each image (B,)."""
    model.eval()
    classes = class_embeddings(model, tokenizer, labels, templates)  # (n_labels, D)
    device = classes.device
    preds = [
        (model.encode_image(pixel_values[i : i + batch_size].to(device)) @ classes.T).argmax(-1).cpu()
        for i in range(0, len(pixel_values), batch_size)
    ]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def retrieval_recall(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    ks: Sequence[int] = (1, 5),
    groups: torch.Tensor | None = None,
) -> dict[str, float]:
    """Recall@k both ways for N matched pairs (row i of each): the share of queries with a correct item among
    their k most similar candidates. `groups` (N,) marks interchangeable pairs (pictures with the same caption):
    any candidate of the query's group counts as correct; by default only the query's own partner does."""
    N = len(image_embeds)
    groups = torch.arange(N) if groups is None else groups
    correct = (groups[:, None] == groups[None, :]).to(image_embeds.device)  # (N, N)
    sims = image_embeds @ text_embeds.T  # (N, N): row = image query, column = text candidate
    out = {}
    for k in ks:
        k_eff = min(k, N)
        top_t = sims.topk(k_eff, dim=1).indices  # (N, k) texts per image
        top_i = sims.T.topk(k_eff, dim=1).indices  # (N, k) images per text
        out[f"image_to_text_recall@{k}"] = float(correct.gather(1, top_t).any(1).float().mean())
        out[f"text_to_image_recall@{k}"] = float(correct.gather(1, top_i).any(1).float().mean())
    return out
