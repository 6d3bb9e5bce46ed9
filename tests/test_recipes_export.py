"""The exportable tiny recipes pretrain and export as they are: s3prl's apc_local and transformers
``from_pretrained`` load the results and reproduce speechssl's hidden states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speechssl.audio import load_audio
from speechssl.cli.main import main
from speechssl.corpora.synthetic import synthesize_corpus
from speechssl.data import read_manifest
from speechssl.upstream import load_encoder

RECIPES = Path(__file__).parents[1] / "recipes" / "pretrain"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize_corpus(tmp_path_factory.mktemp("synth"), backend="formant", speakers=2, utts_per_speaker=2)


def _pretrain(recipe: str, corpus: Path, exp: Path) -> Path:
    argv = ["pretrain", "--config", str(RECIPES / f"{recipe}.yaml"), "--train", str(corpus), "--valid", str(corpus),
            "--exp", str(exp), "train.max_steps=3", "train.valid_every=0", "train.plot=false"]  # fmt: skip
    assert main(argv) == 0
    return exp / "encoder"


def test_apc_s3prl_tiny_exports_to_s3prl_apc_local(corpus, tmp_path, capsys):
    from speechssl.integrations.s3prl_compat import import_s3prl_hub

    encoder = _pretrain("apc_s3prl_tiny", corpus, tmp_path / "apc")
    ckpt = tmp_path / "apc_s3prl.ckpt"
    assert main(["export", "s3prl-apc", "--encoder", str(encoder), "--out", str(ckpt)]) == 0
    assert "apc_local" in capsys.readouterr().err
    upstream = import_s3prl_hub().apc_local(str(ckpt)).eval()
    wav = load_audio(read_manifest(corpus)[0]["path"])
    with torch.no_grad():
        theirs = upstream([wav])["hidden_states"]
        ours = load_encoder(encoder, layers=["layer_1", "layer_2", "layer_3"])(wav)
    assert len(theirs) == 3
    for name, t, o in zip(ours.layer_names, theirs, ours.hidden_states):
        assert t.shape == o.shape, name
        # s3prl's utterance CMVN divides by the unbiased std, speechssl by the population std
        # (relative change ~ 1 / (2 n) for n frames), as in test_s3prl_apc_export.
        torch.testing.assert_close(t, o, atol=1e-2, rtol=0, msg=name)


def test_wav2vec2_hf_tiny_exports_to_transformers(corpus, tmp_path, capsys):
    import transformers

    encoder = _pretrain("wav2vec2_hf_tiny", corpus, tmp_path / "w2v")
    out = tmp_path / "hf"
    assert main(["export", "hf", "--encoder", str(encoder), "--out", str(out)]) == 0
    hf = transformers.Wav2Vec2Model.from_pretrained(str(out)).eval()
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(out))
    assert not extractor.do_normalize  # as the recipe's waveform frontend
    wav = load_audio(read_manifest(corpus)[0]["path"])
    inputs = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(inputs.input_values, output_hidden_states=True)
        ours = load_encoder(encoder)(wav)
    torch.testing.assert_close(ours.layer("context")[0], theirs.last_hidden_state[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.layer("layer_1")[0], theirs.hidden_states[1][0], atol=1e-4, rtol=1e-4)
