"""The training loss: the chunked cross-entropy of bf16 training against full logits, and which loss a run takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.lib.device import Placement
from pipeline.lib.training import ChunkedLinearXent, chunked_lm_loss, lm_loss, loss_for
from tests.test_pool import tiny_llama

CPU = torch.device("cpu")


@pytest.mark.parametrize("chunk", [7, 64, 1000])  # many chunks with a ragged last one, one exact fit, one chunk for all
def test_the_chunked_loss_and_its_gradients_equal_the_full_logits_ones(chunk):
    torch.manual_seed(0)
    n, d, v = 64, 16, 300
    h0, w0 = torch.randn(n, d, dtype=torch.float64), torch.randn(v, d, dtype=torch.float64) * 0.3
    y = torch.randint(0, v, (n,))
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    ref = F.cross_entropy(h @ w.T, y)  # float64: the reference
    (ref * 3.0).backward()  # an upstream gradient other than 1 reaches both inputs
    hc, wc = h0.float().requires_grad_(), w0.float().requires_grad_()
    got = ChunkedLinearXent.apply(hc, wc, y, chunk)
    (got * 3.0).backward()
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert hc.grad.dtype == wc.grad.dtype == torch.float32
    torch.testing.assert_close(hc.grad.double(), h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(wc.grad.double(), w.grad, rtol=1e-5, atol=1e-7)


def test_the_chunked_lm_loss_of_a_tied_llama_equals_lm_loss_gradients_included():
    """Through a whole model with tied embeddings: the head's gradient and the input embedding's meet in one tensor."""
    model = tiny_llama(hidden=32).train()
    x = torch.randint(0, model.config.vocab_size, (3, 41), generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (lm_loss, chunked_lm_loss):
        model.zero_grad(set_to_none=True)
        loss = fn(model, x)
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-6)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-4, atol=1e-6)


def test_bf16_training_takes_the_chunked_loss_where_the_head_is_plain_and_fp32_never():
    from transformers import GPT2Config, GPT2LMHeadModel

    llama = tiny_llama(hidden=32)
    assert loss_for(llama, Placement(CPU)) is lm_loss  # the default: the same operations as before
    assert loss_for(llama, Placement(CPU, "bf16-train")) is chunked_lm_loss
    assert loss_for(llama, Placement(CPU, "bf16-mixed")) is chunked_lm_loss
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=16, n_layer=1, n_head=2, n_positions=64))
    assert loss_for(gpt2, Placement(CPU, "bf16-train")) is lm_loss  # not a model the chunked loss knows: full logits
