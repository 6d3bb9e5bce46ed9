"""speechssl export s3prl-tera: s3prl's own tera_local / mockingjay_local load the checkpoint and give our
hidden states; import_s3prl_tera reads it back."""

from __future__ import annotations

import pytest
import torch

from speechssl.cli.main import main as cli_main
from speechssl.config import to_dict
from speechssl.integrations.s3prl_apc import ExportError
from speechssl.integrations.s3prl_tera import S3PRLImportError, export_s3prl_tera, import_s3prl_tera
from speechssl.models.base import build_model
from speechssl.models.tera import TERAConfig
from speechssl.upstream import load_encoder
from speechssl.upstream.release import save_released_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tera(**changes):
    changes.setdefault("frontend", {"name": "fbank", "num_mel_bins": 40, "cmvn": "utterance"})
    cfg = TERAConfig(embed_dim=32, num_layers=2, num_heads=4, ffn_dim=64, **changes)
    torch.manual_seed(0)
    model = build_model({"name": "tera", **to_dict(cfg)})
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a swapped key would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def hub():
    from speechssl.integrations.s3prl_compat import import_s3prl_hub

    return import_s3prl_hub()


@pytest.mark.parametrize("upstream,cmvn,tol,target,scale", [("tera_local", "none", 1e-5, "input", 0.1),
                                                              ("mockingjay_local", "utterance", 2e-2, "linear", 1.0)])
def test_s3prl_loads_our_tera_and_gives_our_hidden_states(hub, tmp_path, capsys, upstream, cmvn, tol, target, scale):
    # tol for utterance CMVN: s3prl divides by the unbiased std, we by the population std
    changes = {"target": target, "frequency_alteration": False} if target == "linear" else {}
    changes["position_scale"] = scale
    model = _tera(frontend={"name": "fbank", "num_mel_bins": 40, "cmvn": cmvn}, **changes)
    release = save_released_encoder(model, tmp_path / "encoder")
    ckpt = tmp_path / "tera_s3prl.ckpt"
    assert cli_main(["export", "s3prl-tera", "--encoder", str(release), "--out", str(ckpt)]) == 0
    assert "tera_local" in capsys.readouterr().err
    assert set(torch.load(ckpt, weights_only=True)) == {"Config", "Upstream_Config", "Transformer", "SpecHead",
                                                         "speechssl"}  # plain data only
    s3prl_model = getattr(hub, upstream)(str(ckpt)).eval()
    wavs = [0.1 * torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in (24000, 13000)]
    with torch.no_grad():
        theirs = s3prl_model(wavs)["hidden_states"]
    enc = load_encoder(release, layers=["latent", "layer_1", "layer_2"])
    assert len(theirs) == 3
    for i, wav in enumerate(wavs):
        ours = enc(wav)
        for name, t, o in zip(ours.layer_names, theirs, ours.hidden_states):
            n = o.shape[1]
            assert t.shape[1] >= n, name
            torch.testing.assert_close(t[i, :n], o[0], atol=tol, rtol=0, msg=f"{name} of clip {i}")
    # and back: the import gives the same model (config, weights up to the folded position scale, features)
    back = import_s3prl_tera(ckpt)
    assert back.config.target == target and back.config.frontend["cmvn"] == cmvn and back.config.position_scale == 1.0
    for key, value in model.state_dict().items():
        want = value / scale if key.startswith("input_projection.") else value
        torch.testing.assert_close(back.state_dict()[key], want, rtol=1e-6, atol=0, msg=key)
    a, b = model.encode(wavs[0][None]), back.encode(wavs[0][None])
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_unexportable_models_are_refused(tmp_path):
    out = tmp_path / "x.ckpt"
    with pytest.raises(ExportError, match="stacks 2 frames"):
        export_s3prl_tera(load_encoder(_tera(stack_frames=2)), out)
    with pytest.raises(ExportError, match="only post-LN"):
        export_s3prl_tera(load_encoder(_tera(layer_norm_first=True)), out)
    with pytest.raises(ExportError, match="input_block 'mlp'"):
        export_s3prl_tera(load_encoder(_tera(input_block="mlp")), out)
    with pytest.raises(ExportError, match="positions 'rotary'"):
        export_s3prl_tera(load_encoder(_tera(positions="rotary")), out)
    with pytest.raises(ExportError, match="frontend is 'logmel'"):
        export_s3prl_tera(load_encoder(_tera(frontend={"name": "logmel", "n_mels": 40, "cmvn": "utterance"})), out)
    with pytest.raises(ExportError, match="needs a TERA / Mockingjay encoder"):
        export_s3prl_tera(load_encoder("fbank"), out)
    assert not out.exists()


def test_import_refuses_s3prl_log_mel_checkpoints_and_pickles(tmp_path):
    model = _tera()
    ckpt = export_s3prl_tera(load_encoder(model), tmp_path / "ok.ckpt")
    state = torch.load(ckpt, weights_only=True)
    state["Upstream_Config"]["audio"] = {"target_level": -25, "input": {"feat_type": "mel", "log": True}}
    torch.save(state, tmp_path / "mel.ckpt")
    with pytest.raises(S3PRLImportError, match="centred torchaudio log-Mel"):
        import_s3prl_tera(tmp_path / "mel.ckpt")
    state = torch.load(ckpt, weights_only=True)
    state["Transformer"]["encoder.layer.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.ckpt")
    with pytest.raises(S3PRLImportError, match=r"unused Transformer weights \['Transformer.encoder.layer.0.extra.weight'\]"):
        import_s3prl_tera(tmp_path / "extra.ckpt")
    torch.save({"Config": {}, "optimizer": torch.optim.SGD}, tmp_path / "pickled.ckpt")
    with pytest.raises(S3PRLImportError, match="weights_only=True"):
        import_s3prl_tera(tmp_path / "pickled.ckpt")
