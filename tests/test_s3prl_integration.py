"""The real s3prl 0.4.18 package with speechssl encoders: hub registration, Featurizer, run_downstream."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from speechssl.audio import save_audio
from speechssl.upstream import load_encoder
from speechssl.upstream.release import save_released_encoder


@pytest.fixture(scope="module")
def s3prl_nn():
    from speechssl.integrations.s3prl import register

    hub = register()
    assert "speechssl_local" in hub.options()
    import s3prl.nn

    return s3prl.nn


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    from helpers import tiny_model

    root = tmp_path_factory.mktemp("releases")
    return {fam: save_released_encoder(tiny_model(fam, seed=1), root / fam) for fam in ("apc", "wav2vec2")}


@pytest.mark.parametrize("family", ["apc", "wav2vec2"])
def test_s3prl_upstream_and_featurizer_equal_our_single_utterance_features(s3prl_nn, releases, family):
    upstream = s3prl_nn.S3PRLUpstream("speechssl_local", path_or_url=str(releases[family])).eval()
    featurizer = s3prl_nn.Featurizer(upstream)
    with torch.no_grad():
        featurizer.weights.copy_(torch.linspace(-1.0, 1.0, featurizer.weights.numel()))
    layers = upstream.upstream.layer_names
    expected = {"apc": ["layer_1", "layer_2", "layer_3"], "wav2vec2": ["latent", "layer_1", "layer_2", "layer_3"]}
    assert layers == expected[family]  # one hidden size; no duplicated `context`
    g = torch.Generator().manual_seed(0)
    long, short = 0.1 * torch.randn(24000, generator=g), 0.1 * torch.randn(3217, generator=g)
    wavs = torch.zeros(2, 24000)
    wavs[0], wavs[1, :3217] = long, short
    with torch.no_grad():
        hs, hs_len = upstream(wavs, torch.tensor([24000, 3217]))
        feats, feats_len = featurizer(hs, hs_len)
    stride = upstream.downsample_rates[0]
    assert feats.shape[1] == len(range(0, 24000, stride)) and int(feats_len[1]) == len(range(0, 3217, stride))
    ours = load_encoder(releases[family], layers=layers)(short)
    n = int(ours.lengths[0])
    weights = torch.softmax(featurizer.weights.detach(), dim=0)
    reference = sum(w * h[0] for w, h in zip(weights, ours.hidden_states))
    torch.testing.assert_close(feats[1, :n], reference, atol=1e-5, rtol=0)
    # the frames s3prl counts beyond ours repeat our last frame (no zero padding in its pooling)
    torch.testing.assert_close(feats[1, n: int(feats_len[1])], reference[-1:].expand(int(feats_len[1]) - n, -1),
                               atol=1e-5, rtol=0)


def test_default_layers_leave_out_the_encoders_aliases_not_a_name(tmp_path):
    """A pre-LN wav2vec 2.0's ``context`` is a layer norm of ``layer_3``, not a copy: it is a layer
    of its own and stays; APC's ``context`` is ``layer_3`` itself and goes."""
    from helpers import tiny_model

    from speechssl.config import to_dict
    from speechssl.integrations.s3prl import default_s3prl_layers
    from speechssl.models import build_model
    from speechssl.models.wav2vec2 import wav2vec2_tiny

    torch.manual_seed(0)
    pre_ln = build_model({"name": "wav2vec2", **to_dict(wav2vec2_tiny()), "layer_norm_first": True}).eval()
    enc = load_encoder(save_released_encoder(pre_ln, tmp_path / "pre_ln"))
    assert enc.layer_aliases == {}
    assert default_s3prl_layers(enc) == ["latent", "layer_1", "layer_2", "layer_3", "context"]
    apc = load_encoder(save_released_encoder(tiny_model("apc"), tmp_path / "apc"))
    assert apc.layer_aliases == {"context": "layer_3"}
    assert default_s3prl_layers(apc) == ["layer_1", "layer_2", "layer_3"]


def test_unknown_layer_option_through_model_config(s3prl_nn, releases, tmp_path):
    cfg = tmp_path / "opts.yaml"
    cfg.write_text("layers: [layer_1, layer_3]\n")
    from speechssl.integrations.s3prl import speechssl_local

    up = speechssl_local(str(releases["apc"]), model_config=str(cfg), refresh=False)
    assert up.layer_names == ["layer_1", "layer_3"] and up.get_downsample_rates("hidden_states") == 160
    cfg.write_text("layer: [layer_1]\n")
    with pytest.raises(TypeError, match="unknown option.*'layer'"):
        speechssl_local(str(releases["apc"]), model_config=str(cfg))


def make_iemocap_like(root: Path, per_class: int = 3) -> tuple[Path, Path]:
    """IEMOCAP_full_release/Session{1,2}/sentences/wav/... + s3prl's meta_data/Session1/*.json."""
    corpus, meta = root / "IEMOCAP_full_release", root / "meta_data"
    labels = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
    rng = np.random.default_rng(0)
    split = {"train": [], "test": []}
    for session, part in ((1, "test"), (2, "train"), (3, "train")):
        for k, emotion in enumerate(labels):
            for i in range(per_class if part == "train" else 1):
                rel = f"Session{session}/sentences/wav/Ses0{session}F_impro0{k}/Ses0{session}F_impro0{k}_F00{i}.wav"
                t = np.arange(int(16000 * (0.4 + 0.1 * i))) / 16000
                wav = 0.3 * np.sin(2 * np.pi * (150 + 80 * k) * t) + 0.01 * rng.standard_normal(t.size)
                save_audio(corpus / rel, wav.astype(np.float32))
                split[part].append({"path": rel, "label": emotion, "speaker": f"Ses0{session}F"})
    for part, rows in split.items():
        path = meta / "Session1" / f"{part}_meta_data.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"labels": labels, "meta_data": rows}))
    return corpus, meta


def test_s3prl_run_downstream_trains_and_evaluates_emotion(s3prl_nn, releases, tmp_path, monkeypatch, capsys):
    """s3prl's own run_downstream (in this process: importing s3prl again would double the time)."""
    from speechssl.integrations.s3prl_run import main, superb_emotion_config

    corpus, meta = make_iemocap_like(tmp_path)
    config = superb_emotion_config(str(corpus), str(meta))
    config["runner"].update(total_steps=4, gradient_accumulate_steps=1, log_step=2, eval_step=4, save_step=4)
    config["downstream_expert"]["datarc"].update(train_batch_size=2, eval_batch_size=4)
    cfg_path = tmp_path / "emotion.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    expdir = tmp_path / "result"
    monkeypatch.chdir(tmp_path)
    # run_downstream changes process-wide state: the sharing strategy ('file_system') and
    # builtins.isinstance (s3prl's hack_isinstance); restore both for the tests that follow
    strategy = torch.multiprocessing.get_sharing_strategy()
    original_isinstance = builtins.isinstance
    try:
        main(["-m", "train", "-u", "speechssl_local", "-k", str(releases["apc"]), "-d", "emotion",
              "-c", str(cfg_path), "-p", str(expdir)])
        log = (expdir / "log.log").read_text()
        assert "dev at step 4:" in log and "test at step 4:" in log, log
        assert (expdir / "states-4.ckpt").is_file()
        predictions = (expdir / "test_fold1_predict.txt").read_text().split("\n")
        assert len([p for p in predictions if p]) == 4
        capsys.readouterr()
        # evaluate mode reloads s3prl's own checkpoint (argparse.Namespace allow-listed by the shims)
        main(["-m", "evaluate", "-e", str(expdir / "states-4.ckpt")])
        assert "test acc:" in capsys.readouterr().out
    finally:
        builtins.isinstance = original_isinstance
        torch.multiprocessing.set_sharing_strategy(strategy)
