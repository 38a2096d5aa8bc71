"""FSDP2 from outside the model: `fully_shard` per decoder layer and then on the root (one CPU process, gloo)
gives the same losses and gradients as the unsharded model, because `UniX.forward` runs every parameter
(embeddings, vision tower, decoder, both heads) inside the root's forward."""

import copy
import socket

import pytest
import torch
import torch.distributed as dist
from conftest import randomize
from test_engines import mixed_batch

from unix_cxr.config import load_config
from unix_cxr.model.unix import UniX
from unix_cxr.train.objectives import training_forward

fsdp = pytest.importorskip("torch.distributed.fsdp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _losses(model, batch, noise, timesteps):
    out = training_forward(model, batch, noise=noise, timesteps=timesteps)
    loss = out.ce.mean() + out.mse.mean()
    loss.backward()
    return out.ce.detach(), out.mse.detach()


# FSDP2 warns that a wrapped module returns a view (an in-place op on it would skip the all-gather); no caller
# of MoTLayer or UniX changes their outputs in place.
@pytest.mark.filterwarnings("ignore:FSDP2-wrapped module .* returned a view tensor")
def test_fully_shard_per_layer_and_root_gives_the_unsharded_losses(gloo_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    cfg = load_config("tiny")
    reference = randomize(UniX(cfg)).train()
    sharded = copy.deepcopy(reference)
    mesh = init_device_mesh("cpu", (1,))
    for layer in sharded.decoder.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)

    batch = mixed_batch(cfg)
    noise = torch.randn(22, 16, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([0.3, 0.8])
    ce_ref, mse_ref = _losses(reference, batch, noise, timesteps)
    ce, mse = _losses(sharded, batch, noise, timesteps)
    torch.testing.assert_close(ce, ce_ref)
    torch.testing.assert_close(mse, mse_ref)

    grads_ref = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters() if p.grad is not None}
    assert set(grads) == set(grads_ref)
    for name in ("lm_head.weight", "llm2vae.weight", "decoder.embed_tokens.weight", "vae2llm.weight",
                 "vision.connector.fc1.weight", "decoder.layers.0.gen.q_proj.weight"):
        assert grads_ref[name].abs().sum() > 0, name
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], msg=name)
