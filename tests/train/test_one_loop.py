"""The one training loop: no host sync between log steps, window means, PPO and GRPO through the same loop
function and optimizer, a GRPO run resumed after an interruption continues exactly, MFU's FLOPs count."""

import json
import sys

import pytest
import torch

from danlu.models.checkpoints import save_model
from danlu.models.gpt import GPT, GPTConfig
from danlu.train import loop as loop_module
from danlu.train.config import LoopConfig, TrainConfig
from danlu.train.flops import flops_per_token
from danlu.train.loop import train

LOOP_FILES = ("/danlu/train/",)  # calls from these files count; torch's own (AdamW's step counter) do not


def _tiny():
    torch.manual_seed(0)
    return GPT(
        GPTConfig.from_name("llama-tiny", vocab_size=50, n_layer=1, n_embd=16, n_head=2, block_size=16)
    )


def _batches():
    """Batches made before the run: the batch function itself never touches the host."""
    g = torch.Generator().manual_seed(0)
    data = {s: torch.randint(0, 50, (4, 16), generator=g) for s in range(40)}
    return lambda split, step, micro: {"input_ids": data[step % 40], "labels": data[step % 40]}


class SyncCounter:
    """Counts host syncs (`Tensor.item`, `.cpu`, `.tolist`, `float(t)`, `bool(t)`) made from the loop's files,
    by the step the loop was in when they happened (the step `on_step` last reported, + 1)."""

    NAMES = ("item", "cpu", "tolist", "__float__", "__bool__")

    def __init__(self, monkeypatch):
        self.step, self.by_step = 1, {}
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(original, name))

    def _wrap(self, original, name):
        def counted(t, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if any(part in caller for part in LOOP_FILES):
                self.by_step.setdefault(self.step, []).append(f"{name} from {caller.rsplit('/', 1)[-1]}")
            return original(t, *args, **kwargs)

        return counted

    def on_step(self, step, record):
        self.step = step + 1


def test_the_loop_reads_the_device_only_at_log_steps(tmp_path, monkeypatch):
    counter = SyncCounter(monkeypatch)
    cfg = TrainConfig(max_steps=12, batch_size=4, block_size=16, log_interval=5, eval_interval=0,
                      warmup_steps=2, grad_accum=2, show_progress=False)  # fmt: skip
    summary = train(_tiny(), _batches(), cfg, tmp_path, on_step=counter.on_step)
    # steps 1 (the first loss and the first evaluation), 5, 10 and 12 (the last) read the device; no other
    assert set(counter.by_step) == {1, 5, 10, 12}, counter.by_step
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 5, 10, 12]
    assert all("loss" in r and "grad_norm" in r and "tok_per_s" in r for r in records)
    assert "mfu" not in records[0]  # CPU: tokens/s only
    assert summary["final_train_loss"] == records[-1]["loss"]


def test_a_logged_loss_is_the_mean_of_its_window(tmp_path):
    """Logging every 4 steps logs the mean of the per-step losses a log_interval=1 run logs."""
    common = dict(
        max_steps=8, batch_size=4, block_size=16, eval_interval=0, warmup_steps=2, show_progress=False
    )
    train(_tiny(), _batches(), TrainConfig(**common, log_interval=1), tmp_path / "every")
    train(_tiny(), _batches(), TrainConfig(**common, log_interval=4), tmp_path / "four")

    def losses(d):
        return {r["step"]: r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())}

    every, four = losses(tmp_path / "every"), losses(tmp_path / "four")
    assert sorted(four) == [1, 4, 8]
    assert four[1] == every[1]
    assert four[4] == pytest.approx(sum(every[s] for s in (2, 3, 4)) / 3, rel=1e-12)
    assert four[8] == pytest.approx(sum(every[s] for s in (5, 6, 7, 8)) / 4, rel=1e-12)


def test_a_diverging_run_is_caught_at_the_next_log_step(tmp_path):
    from danlu.errors import DanluError

    cfg = TrainConfig(max_steps=6, batch_size=4, block_size=16, log_interval=3, eval_interval=0,
                      show_progress=False)  # fmt: skip
    model = _tiny()
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(DanluError, match=r"training diverged by step 1 \(logged every 3\): loss is nan"):
        train(model, _batches(), cfg, tmp_path)


def test_one_config_base_and_one_set_of_flags():
    from danlu.align.configs import GRPOConfig, PPOConfig

    assert issubclass(TrainConfig, LoopConfig) and issubclass(PPOConfig, LoopConfig)
    assert issubclass(GRPOConfig, LoopConfig)
    # the online defaults: warmup 5% of the rounds, floor lr / 10, every round logged, no weight decay
    cfg = PPOConfig(max_steps=40)
    assert (cfg.warmup_steps, cfg.min_lr, cfg.log_interval, cfg.weight_decay) == (2, cfg.lr / 10, 1, 0.0)
    fields = {f.name: f for f in PPOConfig.__dataclass_fields__.values()}
    assert fields["lr"].metadata["help"] == LoopConfig.__dataclass_fields__["lr"].metadata["help"]


@pytest.fixture
def optimizers_built(monkeypatch):
    """Every AdamW built, with the file that built it."""
    built = []
    original = torch.optim.AdamW.__init__

    def init(self, *args, **kwargs):
        built.append(sys._getframe(1).f_code.co_filename.replace("\\", "/"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", init)
    return built


@pytest.fixture
def loop_runs(monkeypatch):
    """The objectives `danlu.train.loop.run` was called with."""
    seen = []
    original = loop_module.run

    def spy(objective, *args, **kwargs):
        seen.append(type(objective).__name__)
        return original(objective, *args, **kwargs)

    monkeypatch.setattr(loop_module, "run", spy)
    import danlu.align.grpo
    import danlu.align.ppo

    monkeypatch.setattr(danlu.align.ppo, "run", spy)
    monkeypatch.setattr(danlu.align.grpo, "run", spy)
    return seen


def _arith(world):
    return [r for r in world.sft_records("train") if r["kind"] == "arith"][:6]


def test_ppo_and_grpo_go_through_the_one_loop(
    world, tokenizer, make_gpt, tmp_path, optimizers_built, loop_runs
):
    from danlu.align.configs import GRPOConfig, PPOConfig
    from danlu.align.grpo import grpo
    from danlu.align.ppo import ppo
    from danlu.align.reward import RewardModel
    from danlu.tune.sft import prompt_text

    prompts = [prompt_text({"instruction": r["prompt"], "output": ""}, tokenizer)
               for r in world.preference_records("train")[:4]]  # fmt: skip
    cfg = PPOConfig(max_steps=1, batch_size=2, minibatch_size=2, ppo_epochs=1, max_new_tokens=3, device="cpu")
    ppo(make_gpt(), RewardModel(make_gpt(seed=1)), RewardModel(make_gpt(seed=1)), tokenizer, prompts,
        tmp_path / "ppo", cfg, show_progress=False)  # fmt: skip
    cfg = GRPOConfig(max_steps=1, prompts_per_step=2, group_size=2, max_new_tokens=3, device="cpu")
    grpo(make_gpt(), tokenizer, _arith(world), tmp_path / "grpo", cfg, show_progress=False)
    assert loop_runs == ["PPOObjective", "GRPOObjective"]
    # one optimizer per run (PPO's actor and critic are two groups of it), built by the loop's optim.py
    assert len(optimizers_built) == 2 and all(f.endswith("danlu/train/optim.py") for f in optimizers_built)
    import danlu.align.online as online

    assert not {"adamw", "set_lr", "MetricsLog", "plot_curves"} & set(vars(online))


def test_a_resumed_grpo_run_continues_exactly(world, tokenizer, make_gpt, tmp_path):
    from danlu.align.configs import GRPOConfig
    from danlu.align.grpo import grpo

    cfg = GRPOConfig(max_steps=4, prompts_per_step=2, group_size=4, max_new_tokens=4, ckpt_interval=2,
                     inner_epochs=2, lr=1e-2, device="cpu")  # fmt: skip
    records = _arith(world)

    def save(model, d):
        save_model(model, d, tokenizer=tokenizer)

    import danlu.data.world as world_module

    # a reward with signal for an untrained model (the world's checker would give 0 everywhere)
    reward = lambda r, y: float(len(y) % 2)  # noqa: E731
    original = world_module.reward
    world_module.reward = reward
    try:
        full = make_gpt()
        grpo(full, tokenizer, records, tmp_path / "full", cfg, show_progress=False, save_fn=save)

        class Killed(Exception):
            pass

        def kill_at_3(step, record):
            if step == 3:
                raise Killed

        with pytest.raises(Killed):
            grpo(make_gpt(), tokenizer, records, tmp_path / "cut", cfg, show_progress=False, save_fn=save,
                 on_step=kill_at_3)  # fmt: skip
        resumed = make_gpt()  # a fresh process starts from the SFT model again: it is the reference too
        grpo(
            resumed, tokenizer, records, tmp_path / "cut", cfg, show_progress=False, save_fn=save, resume=True
        )
    finally:
        world_module.reward = original

    def logged(d):
        return [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"}
                for x in (d / "metrics.jsonl").read_text().splitlines()]  # fmt: skip

    assert logged(tmp_path / "cut") == logged(tmp_path / "full")
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    assert any(r.get("kl", 0) > 0 for r in logged(tmp_path / "full"))  # the policy moved


def test_flops_per_token_is_6n_plus_attention():
    model = GPT(
        GPTConfig.from_name("gpt2-tiny", vocab_size=64, n_layer=2, n_embd=32, n_head=2, block_size=32)
    )
    n = sum(p.numel() for p in model.parameters()) - 32 * 32  # without the learned position table
    assert flops_per_token(model, 32) == 6 * n + 12 * 2 * 2 * 16 * 32


def test_mfu_is_logged_where_the_device_has_a_peak(tmp_path, monkeypatch):
    """On CUDA the peak comes from the device's name; here a stated peak stands in for it on the CPU."""
    monkeypatch.setattr(loop_module, "peak_flops", lambda device: 1e6)
    cfg = TrainConfig(max_steps=2, batch_size=4, block_size=16, eval_interval=0, log_interval=1,
                      show_progress=False)  # fmt: skip
    model = _tiny()
    summary = train(model, _batches(), cfg, tmp_path)
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    expected = last["tok_per_s"] * flops_per_token(model, 16) / 1e6
    assert last["mfu"] == pytest.approx(expected, rel=1e-2) and summary["mfu"] == last["mfu"]
