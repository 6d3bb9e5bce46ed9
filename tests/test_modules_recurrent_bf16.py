"""LSTM layers under CPU bf16 autocast: oneDNN has no bf16 LSTM on CPUs without AVX512, so the
stack runs them in fp32 there (speechssl.accel.bf16_lstm) instead of failing."""

from __future__ import annotations

import pytest
import torch

from speechssl import accel
from speechssl.modules.recurrent import RNNStack


@pytest.mark.parametrize("decision", ["forced_fp32", "this_cpu"])
def test_lstm_stack_runs_under_bf16_autocast(monkeypatch, decision):
    if decision == "forced_fp32":
        monkeypatch.setattr(accel, "bf16_lstm", lambda: False)
    use_bf16_kernel = accel.bf16_lstm()
    torch.manual_seed(0)
    stack = RNNStack(16, 32, num_layers=2, cell="lstm").eval()
    x, lengths = torch.randn(3, 20, 16), torch.tensor([20, 14, 7])
    with torch.inference_mode():
        ref = stack(x, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = stack(x, lengths)
            chunked, _ = stack.continue_from(x[:1, :12])
    for a, b in zip(out, ref):
        assert torch.allclose(a.float(), b, atol=5e-2)
    if not use_bf16_kernel:  # the fp32 path is the reference itself
        assert all(torch.allclose(a.float(), b, atol=1e-6) for a, b in zip(out, ref))
        assert torch.allclose(chunked[-1], ref[-1][:1, :12], atol=1e-6)


def test_bf16_extraction_of_an_lstm_encoder(tmp_path):
    from speechssl.config import to_dict
    from speechssl.models.apc import apc_tiny
    from speechssl.models.base import build_model
    from speechssl.upstream import load_encoder, save_encoder

    torch.manual_seed(0)
    save_encoder(build_model({"name": "apc", **to_dict(apc_tiny()), "context": "lstm"}).eval(), tmp_path / "enc")
    wav = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 9000])
    fp32 = load_encoder(tmp_path / "enc")(wav, lengths)
    bf16 = load_encoder(tmp_path / "enc", precision="bf16")(wav, lengths)
    assert bf16.layer_names == fp32.layer_names
    for a, b in zip(bf16.hidden_states, fp32.hidden_states):
        assert torch.isfinite(a).all() and (a - b).abs().max() < 0.1 * b.abs().max()
