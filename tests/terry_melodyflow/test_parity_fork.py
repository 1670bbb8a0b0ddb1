"""Numerical parity with the original fork (betweentwomidnights/melodyflow @ 4c1315a), random weights, CPU, fp32.

The fork's code is never committed: point TERRY_FORK_PATH at a folder holding its `audiocraft/` package (e.g.
`git --git-dir=<fetched mirror> archive HEAD audiocraft | tar -x -C /tmp/mfparity`) and run
`TERRY_FORK_PATH=/tmp/mfparity pytest -m parity tests/terry_melodyflow`. Skipped otherwise.

Compared (tiny demo configs, identical weights loaded into both):
* the fork's `FlowModel` loads our demo `best_state` with `strict=True` (its module tree = our key list), and
  `FlowModel.forward` equals `FlowDiT.forward` for a text-conditioned batch and for the all-masked null prompt;
* `FlowModel.generate` equals `solver.integrate`: regularised euler inversion (cfg 0, 2 iters / keep 1 / lambda 0.2,
  same seed: the fork draws from the global RNG, we from a seeded generator — same stream on CPU), guided euler and
  guided midpoint regeneration (cfg 4);
* `utils.renoise.noise_regularization` (autograd) equals our analytic `regularize_velocity`;
* the fork's `EncodecModel` (built by `builders.get_compression_model` from our codec config) loads our codec
  `best_state` strictly and, after removing weight norm as `MelodyFlow.get_pretrained` does, encodes and decodes like
  `SEANetVAE`.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from terry.melodyflow.checkpoint import codec_config, dit_config
from terry.melodyflow.demo import random_codec, random_dit, tiny_configs
from terry.melodyflow.solver import Regularization, integrate, regularize_velocity

pytestmark = pytest.mark.parity

FORK = os.environ.get("TERRY_FORK_PATH", "")


@pytest.fixture(scope="module")
def fork() -> ModuleType:
    if not FORK or not (Path(FORK) / "audiocraft" / "models" / "flow.py").exists():
        pytest.skip("TERRY_FORK_PATH does not point at the fork's audiocraft package")
    sys.path.insert(0, FORK)
    try:
        for name in [m for m in sys.modules if m == "audiocraft" or m.startswith("audiocraft.")]:
            del sys.modules[name]
        mod = importlib.import_module("audiocraft")
        assert str(Path(mod.__file__).resolve()).startswith(str(Path(FORK).resolve())), "imported the wrong audiocraft"
        importlib.import_module("audiocraft.models.flow")
        importlib.import_module("audiocraft.models.builders")
        importlib.import_module("audiocraft.utils.renoise")
        return mod
    finally:
        sys.path.remove(FORK)


class _Provider(nn.Module):
    """Stands in for the fork's ConditioningProvider: same `output_proj` key, hands back fixed projected states."""

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.conditioners = nn.ModuleDict({"description": nn.Module()})
        self.conditioners["description"].output_proj = nn.Linear(cond_dim, dim)
        self.states: tuple[torch.Tensor, torch.Tensor] | None = None

    def tokenize(self, conditions: list) -> list:
        return conditions

    def forward(self, _tokenized: list) -> dict:
        assert self.states is not None
        return {"description": self.states}


def _fork_flow(fork: ModuleType, cfg: dict) -> tuple[nn.Module, _Provider]:
    c = dit_config(cfg)
    provider = _Provider(c.cond_dim, c.dim)
    kwargs = dict(cfg["transformer_lm"])
    model = fork.models.flow.FlowModel(provider, None, device="cpu", **kwargs)
    return model.eval(), provider


@pytest.fixture(scope="module")
def pair(fork: ModuleType):  # noqa: ANN201
    dit_cfg, _ = tiny_configs()
    ours = random_dit(dit_cfg, seed=3).eval()
    theirs, provider = _fork_flow(fork, dit_cfg)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs, provider


def _text(ours: nn.Module, rows: int, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(rows, length, ours.config.cond_dim, generator=gen)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, 5:] = 0
    return hidden, mask


def test_forward_matches_fork(pair) -> None:  # noqa: ANN001
    ours, theirs, _ = pair
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(2, ours.config.latent_dim, 50, generator=gen)
    t = torch.tensor([0.3, 0.8])
    hidden, mask = _text(ours, 2)
    cond, bias = ours.project_text(hidden, mask)
    with torch.no_grad():
        fork_cond = theirs.condition_provider.conditioners["description"].output_proj(hidden) * mask.unsqueeze(-1)
        ref = theirs(z, t[:, None], fork_cond, torch.log(mask.float()[:, None, None, :]))
        got = ours(z, t, cond, bias)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        # null prompt: every text token masked -> the zero slot makes cross-attention exactly 0, which we skip
        null_ref = theirs(z, t[:, None], torch.zeros_like(fork_cond), torch.log(torch.zeros(2, 1, 1, 7)))
        assert torch.isfinite(null_ref).all()
        torch.testing.assert_close(ours(z, t), null_ref, rtol=1e-4, atol=1e-5)


def test_noise_regularization_matches_fork(fork: ModuleType) -> None:
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(2, 32, 46, generator=gen)
    target = torch.randn(2, 32, 46, generator=gen) * 1.3 + 0.2
    ref = fork.utils.renoise.noise_regularization(v, target, lambda_kl=0.2, lambda_ac=0.0, num_reg_steps=4, num_ac_rolls=5)
    torch.testing.assert_close(regularize_velocity(v, target, 0.2), ref, rtol=1e-4, atol=1e-5)


def _attrs(fork: ModuleType, text: str) -> list:
    return [fork.modules.conditioners.ConditioningAttributes(text={"description": text})]


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_edit_solvers_match_fork(pair, fork: ModuleType, solver: str) -> None:  # noqa: ANN001
    ours, theirs, provider = pair
    gen = torch.Generator().manual_seed(9)
    x0 = torch.randn(1, ours.config.latent_dim, 40, generator=gen)
    steps, flowstep = (4, 0.2)
    reg = solver == "euler"

    # inversion: null prompt, no guidance (regularised for euler)
    provider.states = (torch.zeros(2, 3, ours.config.dim), torch.zeros(2, 3))
    torch.manual_seed(1234)
    ref_inv = theirs.generate(prompt=x0, conditions=_attrs(fork, ""), solver=solver, steps=steps, source_flowstep=1.0,
                              target_flowstep=flowstep, regularize=reg, regularize_iters=2 if reg else 0,
                              keep_last_k_iters=1 if reg else 0, lambda_kl=0.2 if reg else 0.0)
    our_inv = integrate(lambda x, t: ours(x, torch.full((x.shape[0],), t)), x0, 1.0, flowstep, solver=solver, steps=steps,
                        regularization=Regularization() if reg else None, x0=x0,
                        generator=torch.Generator().manual_seed(1234))
    torch.testing.assert_close(our_inv, ref_inv, rtol=1e-4, atol=1e-4)

    # regeneration: prompt + null rows, cfg 4, never regularised
    hidden, mask = _text(ours, 1)
    cond, bias = ours.project_text(hidden, mask)
    provider.states = (torch.cat([cond, torch.zeros_like(cond)]), torch.cat([mask, torch.zeros_like(mask)]))
    ref_gen = theirs.generate(prompt=ref_inv, conditions=_attrs(fork, "x"), solver=solver, steps=steps,
                              source_flowstep=flowstep, target_flowstep=1.0, regularize=False)
    null_bias = torch.full_like(bias, float("-inf"))
    null_bias[..., 0] = 0

    def guided(x: torch.Tensor, t: float) -> torch.Tensor:
        v = ours(torch.cat([x, x]), torch.full((2,), t), torch.cat([cond, torch.zeros_like(cond)]), torch.cat([bias, null_bias]))
        return 5.0 * v[:1] - 4.0 * v[1:]

    our_gen = integrate(guided, ref_inv, flowstep, 1.0, solver=solver, steps=steps)
    torch.testing.assert_close(our_gen, ref_gen, rtol=1e-4, atol=1e-4)


def test_codec_matches_fork(fork: ModuleType) -> None:
    from omegaconf import OmegaConf

    _, codec_cfg = tiny_configs()
    ours = random_codec(codec_cfg, seed=4).eval()
    cfg = OmegaConf.create({k: v for k, v in codec_cfg.items() if k != "gary_demo"})
    cfg.device = "cpu"
    theirs = fork.models.builders.get_compression_model(cfg).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    for module in theirs.modules():
        for attr in ("conv", "convtr"):
            inner = getattr(module, attr, None)
            if isinstance(inner, nn.Conv1d | nn.ConvTranspose1d) and torch.nn.utils.parametrize.is_parametrized(inner):
                torch.nn.utils.parametrize.remove_parametrizations(inner, "weight")
    ours.fold_weight_norm()
    wav = torch.randn(1, 2, 48000 + 3840, generator=torch.Generator().manual_seed(0)) * 0.3
    with torch.no_grad():
        ref = theirs.encode(wav)[0].squeeze(1)
        got = ours.encode(wav)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        z = got[:, : codec_config(codec_cfg).dimension]
        torch.testing.assert_close(ours.decode(z), theirs.decode(z[:, None]), rtol=1e-4, atol=1e-5)
