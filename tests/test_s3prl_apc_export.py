"""speechssl export s3prl-apc: s3prl's own apc_local loads the checkpoint and gives our hidden states."""

from __future__ import annotations

import pytest
import torch

from speechssl.cli.main import main as cli_main
from speechssl.config import to_dict
from speechssl.integrations.s3prl_apc import ExportError, export_s3prl_apc
from speechssl.models import apc
from speechssl.models.base import build_model
from speechssl.upstream import load_encoder
from speechssl.upstream.release import save_released_encoder


def _apc(**changes):
    cfg = apc.APCConfig(num_layers=3, hidden_size=256, context="gru",
                        frontend={"name": "fbank", "window_type": "hamming", "cmvn": "utterance"})
    for key, value in changes.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    return build_model({"name": "apc", **to_dict(cfg)}).eval()


@pytest.fixture(scope="module")
def apc_local():
    from speechssl.integrations.s3prl_compat import import_s3prl_hub

    return import_s3prl_hub().apc_local


@pytest.mark.parametrize("cmvn,tol", [("none", 1e-5), ("utterance", 1e-2)])
def test_apc_local_gives_our_hidden_states(apc_local, tmp_path, cmvn, tol, capsys):
    # tol for utterance CMVN: s3prl divides by the unbiased std, we by the population std
    # (relative change ~ 1/(2 n) for n frames: 0.3 % here)
    model = _apc(frontend={"name": "fbank", "window_type": "hamming", "cmvn": cmvn})
    release = save_released_encoder(model, tmp_path / "encoder")
    ckpt = tmp_path / "apc_s3prl.ckpt"
    assert cli_main(["export", "s3prl-apc", "--encoder", str(release), "--out", str(ckpt)]) == 0
    assert "apc_local" in capsys.readouterr().err
    assert set(torch.load(ckpt, weights_only=True)) == {"config", "model", "speechssl"}  # plain data only
    upstream = apc_local(str(ckpt)).eval()
    wav = 0.1 * torch.randn(24000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = upstream([wav])["hidden_states"]
    ours = load_encoder(release, layers=["layer_1", "layer_2", "layer_3"])(wav)
    assert len(theirs) == 3
    for name, t, o in zip(ours.layer_names, theirs, ours.hidden_states):
        assert t.shape == o.shape, name
        torch.testing.assert_close(t, o, atol=tol, rtol=0, msg=name)


def test_unexportable_models_are_refused(tmp_path):
    with pytest.raises(ExportError, match="Hamming window"):
        export_s3prl_apc(load_encoder(_apc(frontend={"name": "fbank"})), tmp_path / "x.ckpt")
    with pytest.raises(ExportError, match="exactly 3 GRU layers, this model has 2"):
        export_s3prl_apc(load_encoder(_apc(num_layers=2)), tmp_path / "x.ckpt")
    with pytest.raises(ExportError, match="frontend is 'logmel'"):
        export_s3prl_apc(load_encoder(_apc(frontend={"name": "logmel"})), tmp_path / "x.ckpt")
    with pytest.raises(ExportError, match="needs an APC encoder"):
        export_s3prl_apc(load_encoder("fbank"), tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()
