"""The one optimizer step (clipping, fp16 loss scaling, the non-finite rule) and the one device rule."""
from __future__ import annotations

import pytest
import torch

from lmscale.config import ConfigError
from lmscale.training.device import resolve_device
from lmscale.training.distributed import DistInfo
from lmscale.training.engine import grad_scaler, precision
from lmscale.training.step import BadSteps, OptimizerStep, record_step

CPU = torch.device("cpu")


def _model_and_step(**kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, OptimizerStep(model, opt, **kwargs)


def _loss(model):
    return model(torch.ones(8, 4)).float().pow(2).mean()


def test_a_nonfinite_loss_leaves_weights_and_optimizer_state_as_they_were():
    model, step = _model_and_step(grad_clip=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    loss, norm, skipped = step(1e-2, lambda: _loss(model) * float("nan")).read()
    assert skipped and loss != loss and norm != norm
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert not step.optimizer.state and all(p.grad is None for p in model.parameters())
    loss, norm, skipped = step(1e-2, lambda: _loss(model)).read()
    assert not skipped and norm > 0 and not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_gradients_are_clipped_and_the_norm_before_clipping_is_reported():
    model, step = _model_and_step(grad_clip=0.01)
    step.set_lr(0.0)
    loss = _loss(model)
    step.backward(loss)
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    clipped = {}
    step.optimizer.register_step_pre_hook(
        lambda opt, *_: clipped.update(norm=torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters()])).item()))
    result = step.update(loss.detach())
    assert result.read()[1] == pytest.approx(expected) and expected > 0.01
    assert clipped["norm"] == pytest.approx(0.01, rel=1e-4)


def test_fp16_with_its_gradient_scaler_on_cpu():
    autocast, dtype = precision(CPU, "fp16")
    model, step = _model_and_step(grad_clip=1.0, autocast=autocast, scaler=grad_scaler(CPU, dtype))
    assert dtype == "fp16" and grad_scaler(CPU, "bf16") is None
    with autocast():
        assert model(torch.ones(2, 4)).dtype == torch.float16
    before = [p.detach().clone() for p in model.parameters()]
    # the first steps' scaled fp16 gradients overflow until the scaler has lowered its scale: none
    # of them is a bad step, and the weights (fp32) train once the scale fits
    assert not any(step(1e-2, lambda: _loss(model)).read()[2] for _ in range(20))
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # gradients that overflow once scaled: the scaler skips the update and lowers its scale, and a
    # finite loss does not count as a bad step
    scale = step.scaler.get_scale()
    before = [p.detach().clone() for p in model.parameters()]
    _, _, skipped = step(1e-2, lambda: model.weight.sum() * 1e-3 * 3e38).read()
    assert not skipped and step.scaler.get_scale() < scale
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    _, _, skipped = step(1e-2, lambda: _loss(model) * float("inf")).read()
    assert skipped


def test_a_streak_of_nonfinite_steps_stops_at_the_limit():
    counts = BadSteps()
    seen = [record_step(counts, s, 3) for s in (True, False, True, True, True, True, False)]
    assert seen == [False, False, False, False, True, True, False]
    assert (counts.bad_steps, counts.consecutive_bad) == (5, 0)


# ----------------------------------------------------------------------------- devices

def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    with pytest.raises(ConfigError, match=r"train.device=cuda but CUDA is not available.*train.device=cpu"):
        resolve_device("cuda", what="train.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", DistInfo(local_rank=1, world_size=2)) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"--device=cuda:2 but this machine has 2 CUDA device"):
        resolve_device("cuda:2", what="--device")
    # under torchrun every process takes its own GPU, whatever index was asked
    assert resolve_device("cuda:5", DistInfo(local_rank=1, world_size=2)) == torch.device("cuda", 1)


@pytest.mark.parametrize("spec", ["banana", "gpu", "cuda:", "CUDA", "cuda:1x", ""])
def test_resolve_device_refuses_what_is_not_a_device(spec):
    with pytest.raises(ConfigError, match="is not a device: use auto, cpu, cuda, cuda:N or mps"):
        resolve_device(spec)


def test_resolve_device_refuses_mps_where_metal_is_absent(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="mps but Apple's Metal backend is not available"):
        resolve_device("mps")
