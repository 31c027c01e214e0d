"""P-tuning: trainable virtual tokens produced by a prompt encoder, prepended to a frozen model's input
(Liu et al. 2021, "GPT Understands, Too"; notes 004 §8).

Notes 004: "P-tuning replaces discrete prompt tokens with differentiable virtual tokens, added only at the
input layer, and encodes them with a prompt encoder (BiLSTM + MLP)."

    h_1..h_n = MLP(BiLSTM(e_1..e_n))        e_i: a learned embedding per virtual token, h_i: (C,)
    model input = [h_1 .. h_n ; wte(x_1) .. wte(x_T)]   — only the encoder's parameters train

The LSTM ties the virtual tokens to one another (the paper's argument: independent embeddings fall into local
minima more easily). After training, the n vectors are fixed: they could be cached, the encoder dropped.

`PTuningModel` wraps a GPT and still speaks the GPT interface (`config`, `new_kv_cache`, forward with
attention_mask / kv_cache / position_ids), so `danlu.generate` and the evaluators use it unchanged: the virtual
tokens are prepended on the first (prefill) call and hidden from the returned logits.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from danlu.errors import DanluError
from danlu.models.gpt import GPT, GPTOutput, causal_lm_loss


@dataclass
class PTuningConfig:
    n_virtual: int = 16  # number of virtual tokens
    hidden: int = 0  # LSTM / MLP width; 0 means the model's n_embd

    def __post_init__(self) -> None:
        if self.n_virtual < 1:
            raise DanluError(f"P-tuning needs at least one virtual token, got n_virtual={self.n_virtual}")
        if self.hidden < 0:
            raise DanluError(f"P-tuning hidden size must be >= 0, got {self.hidden}")


class PromptEncoder(nn.Module):
    """n virtual-token embeddings -> 2-layer BiLSTM -> 2-layer MLP -> (n, C) input embeddings."""

    def __init__(self, n_virtual: int, C: int, hidden: int = 0) -> None:
        super().__init__()
        hidden = hidden or C
        if hidden % 2:
            raise DanluError(f"P-tuning hidden size must be even (two LSTM directions), got {hidden}")
        self.embedding = nn.Embedding(n_virtual, hidden)
        self.lstm = nn.LSTM(hidden, hidden // 2, num_layers=2, bidirectional=True, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, C))
        self.register_buffer("ids", torch.arange(n_virtual), persistent=False)

    def forward(self) -> torch.Tensor:
        e = self.embedding(self.ids)[None]  # (1, n, hidden)
        h, _ = self.lstm(e)  # (1, n, hidden): forward and backward states concatenated
        return self.mlp(h)[0]  # (n, C)


class PTuningModel(nn.Module):
    """A frozen GPT with `n_virtual` encoder-made tokens in front of every input."""

    def __init__(self, gpt: GPT, cfg: PTuningConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or PTuningConfig()
        if cfg.n_virtual >= gpt.config.block_size:
            raise DanluError(
                f"{cfg.n_virtual} virtual tokens leave no room in a {gpt.config.block_size}-token context"
            )
        self.gpt = gpt
        for p in gpt.parameters():
            p.requires_grad_(False)
        self.ptuning = cfg
        self.n_virtual = cfg.n_virtual
        self.encoder = PromptEncoder(cfg.n_virtual, gpt.config.n_embd, cfg.hidden)
        # What callers (the training loop, generation) may use: the context left after the virtual tokens.
        self.config = dataclasses.replace(gpt.config, block_size=gpt.config.block_size - cfg.n_virtual)

    def new_kv_cache(self, B: int, max_len: int | None = None):
        return self.gpt.new_kv_cache(B, (max_len or self.config.block_size) + self.n_virtual)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        kv_cache=None,
        position_ids: torch.Tensor | None = None,
    ) -> GPTOutput:
        """As GPT.forward on the real tokens; logits (B, T, V) are those of the real tokens only."""
        B, T = input_ids.shape
        n = self.n_virtual
        prefill = kv_cache is None or kv_cache.seq_len == 0
        if attention_mask is not None:  # the virtual tokens are always visible
            ones = torch.ones(B, n, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, n + S)
        if position_ids is not None:
            position_ids = position_ids + n
        if not prefill:  # decoding: the virtual tokens are already in the cache
            return self.gpt(input_ids, attention_mask, None, kv_cache, position_ids)
        embeds = self.gpt.wte(input_ids)  # (B, T, C)
        virtual = self.encoder().to(embeds.dtype).expand(B, n, -1)  # (B, n, C)
        if position_ids is not None:
            head = torch.arange(n, device=input_ids.device).expand(position_ids.shape[0], n)
            position_ids = torch.cat([head, position_ids], dim=1)  # (B|1, n + T)
        out = self.gpt(None, attention_mask, None, kv_cache, position_ids,
                       inputs_embeds=torch.cat([virtual, embeds], dim=1))  # fmt: skip
        logits = out.logits[:, n:]  # (B, T, V)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return GPTOutput(logits=logits, loss=loss)

    def save(self, path: str | Path) -> Path:
        """The prompt encoder alone: ptuning_config.json + prompt_encoder.safetensors."""
        from safetensors.torch import save_file

        from danlu.fileio import atomic_dir

        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}
        with atomic_dir(path) as tmp:
            conf = dataclasses.asdict(self.ptuning) | {"n_embd": self.gpt.config.n_embd}
            (tmp / "ptuning_config.json").write_text(json.dumps(conf, indent=2))
            save_file(tensors, str(tmp / "prompt_encoder.safetensors"))
        return path

    @classmethod
    def load(cls, gpt: GPT, path: str | Path) -> PTuningModel:
        """Wrap `gpt` with the prompt encoder saved at `path`."""
        from safetensors.torch import load_file

        path = Path(path)
        conf_file = path / "ptuning_config.json"
        if not conf_file.is_file():
            raise DanluError(f"{path} is not a P-tuning folder: ptuning_config.json is missing")
        conf = json.loads(conf_file.read_text())
        if conf.pop("n_embd") != gpt.config.n_embd:
            raise DanluError(f"{path}: the prompt encoder was trained for another model width")
        model = cls(gpt, PTuningConfig(**conf))
        model.encoder.load_state_dict(load_file(str(path / "prompt_encoder.safetensors")))
        return model
