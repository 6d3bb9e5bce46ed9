"""One layer grammar (LayerSelection) for load_encoder, extract, the Featurizer and results.json;
structural layer aliases instead of comparing values; encoder roles as data."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from speechssl.config import to_dict
from speechssl.downstream import FeatureSet, downstream_config, run_experiment
from speechssl.models.base import build_model
from speechssl.upstream import load_encoder
from speechssl.upstream.layers import LayerSelection, UnknownLayerError
from speechssl.upstream.release import read_release_config, save_released_encoder

APC_LIKE = ["latent", "layer_1", "layer_2", "context"]


def _tiny(name: str, **changes):
    module = importlib.import_module(f"speechssl.models.{name}")
    torch.manual_seed(0)
    return build_model({"name": name, **to_dict(getattr(module, f"{name}_tiny")()), **changes}).eval()


@pytest.mark.parametrize(("spec", "indices", "names"), [
    ("all", [0, 1, 2, 3], APC_LIKE),
    (None, [0, 1, 2, 3], APC_LIKE),
    ("context, latent", [3, 0], ["context", "latent"]),
    ([-1, 1], [3, 1], ["context", "layer_1"]),
    ("-2", [2], ["layer_2"]),
    ("last", [3], ["last"]),
])
def test_grammar(spec, indices, names):
    resolved = LayerSelection.parse(spec).resolve(APC_LIKE)
    assert resolved.indices == indices and resolved.names == names
    assert resolved.canonical == [APC_LIKE[i] for i in indices]


def test_aliases_on_a_single_layer_encoder_keep_the_requested_name():
    resolved = LayerSelection.parse("context").resolve(["features"])
    assert (resolved.indices, resolved.names, resolved.canonical) == ([0], ["context"], ["features"])


@pytest.mark.parametrize(("spec", "message"), [
    ("", "empty layer name"),
    ("a,a", "'a' is selected twice"),
    ("all,context", "'all' cannot be combined"),
    ([], "empty selection"),
])
def test_malformed_selections_fail_when_parsed(spec, message):
    with pytest.raises(ValueError, match=message):
        LayerSelection.parse(spec)
    # the downstream config refuses them when it is read, before any feature is computed
    with pytest.raises(ValueError, match=message):
        downstream_config({"featurizer": {"layers": spec}})


def test_resolution_errors_list_the_layers():
    with pytest.raises(ValueError, match="a name or an integer"):
        LayerSelection.parse([1.5])
    with pytest.raises(UnknownLayerError, match="unknown layer 'layer_9'; layers: latent, layer_1, layer_2, context"):
        LayerSelection.parse("layer_9").resolve(APC_LIKE)
    with pytest.raises(KeyError):  # also a KeyError, as the featurizer always raised
        LayerSelection.parse([7]).resolve(APC_LIKE)
    with pytest.raises(ValueError, match="'context' is selected twice"):
        LayerSelection.parse("context,-1").resolve(APC_LIKE)


def test_weighted_sum_of_all_leaves_out_other_sizes_and_declared_aliases():
    sel = LayerSelection.parse("all")
    layers, dropped = sel.for_weighted_sum(APC_LIKE, [80, 8, 8, 8], {"context": "layer_2"})
    assert layers == ["layer_1", "layer_2"] and dropped == {"size": ["latent"], "alias": ["context"]}
    layers, dropped = sel.for_weighted_sum(APC_LIKE, [80, 8, 8, 8], {})  # pre-LN: context is its own layer
    assert layers == ["layer_1", "layer_2", "context"]
    # an explicit selection is taken as given, by the encoder's own names
    assert LayerSelection.parse([-1]).for_weighted_sum(APC_LIKE, [80, 8, 8, 8])[0] == ["context"]
    with pytest.raises(ValueError, match=r"equal sizes, got \{'latent': 80, 'context': 8\}"):
        LayerSelection.parse("latent,context").for_weighted_sum(APC_LIKE, [80, 8, 8, 8])


def test_encoders_report_structural_aliases():
    apc = load_encoder(_tiny("apc"))
    assert apc.layer_aliases == {"context": "layer_3"}
    post_ln = load_encoder(_tiny("wav2vec2", layer_norm_first=False))
    assert post_ln.layer_aliases == {"context": f"layer_{len(post_ln.layer_names) - 2}"}
    pre_ln = load_encoder(_tiny("wav2vec2", layer_norm_first=True))  # context = LayerNorm(layer_N)
    assert pre_ln.layer_aliases == {}
    assert load_encoder("logmel").layer_aliases == {}
    # only among the selected layers
    assert load_encoder(_tiny("apc"), layers="context,latent").layer_aliases == {}
    assert load_encoder("logmel", layers="last").layer_names == ["last"]


class _Source:
    """Four layers; "context" holds the same values as "signal" (a copy, not the same tensor)."""

    def __init__(self, aliases=None):
        self.aliases = aliases

    def features(self, records, desc=""):
        feats = []
        for rec in records:
            g = torch.Generator().manual_seed(int(rec["id"]))
            signal = torch.randn(6, 4, generator=g) + (2.0 if rec["cls"] == "p" else -2.0)
            feats.append([torch.randn(6, 2, generator=g), torch.randn(6, 4, generator=g), signal, signal.clone()])
        return FeatureSet([r["id"] for r in records], feats, ["latent", "noise", "signal", "context"], 160)

    def describe(self):
        return {"spec": "test"}

    def layer_aliases(self):
        return self.aliases


def test_featurizer_takes_aliases_from_the_source_and_the_shared_grammar():
    recs = [{"id": str(i), "cls": "pn"[i % 2]} for i in range(12)]
    splits = {"train": recs[:8], "test": recs[8:]}
    cfg = downstream_config({"head": {"name": "linear_probe"}, "train": {"max_steps": 2}})
    # the source says "context" is its own layer: it is kept although its values equal "signal"
    res, _ = run_experiment(_Source(aliases={}), splits, "cls", cfg, None, progress=False)
    assert res["featurizer"]["layers"] == ["noise", "signal", "context"]
    res, _ = run_experiment(_Source(aliases={"context": "signal"}), splits, "cls", cfg, None, progress=False)
    assert res["featurizer"]["layers"] == ["noise", "signal"]
    # a source that cannot say (None): the values of the first utterance decide, as for old feature folders
    res, _ = run_experiment(_Source(aliases=None), splits, "cls", cfg, None, progress=False)
    assert res["featurizer"]["layers"] == ["noise", "signal"]
    # indices and aliases select layers in the featurizer too; results.json records the layer names
    last = downstream_config({"head": {"name": "linear_probe"}, "train": {"max_steps": 2},
                              "featurizer": {"layers": [-2, "last"]}})
    res, model = run_experiment(_Source(), splits, "cls", last, None, progress=False)
    assert res["featurizer"]["layers"] == ["signal", "context"] == model.layers


def test_roles_are_data(tmp_path):
    control = save_released_encoder(_tiny("apc"), tmp_path / "ctl", extra={"step": 0})
    trained = save_released_encoder(_tiny("apc"), tmp_path / "ssl", extra={"step": 10})
    named = save_released_encoder(_tiny("apc"), tmp_path / "ctl2", extra={"step": 0}, control_of="apc")
    assert read_release_config(control)["role"] == "control" and read_release_config(trained)["role"] == "ssl"
    assert load_encoder(control).role == "control" and load_encoder(trained).role == "ssl"
    assert load_encoder(named).role_info()["control_of"] == "apc"
    assert load_encoder(control).role_info()["architecture"] == load_encoder(trained).role_info()["architecture"]
    assert load_encoder("logmel").role == "baseline" and load_encoder("logmel").describe()["role"] == "baseline"
    # a folder released before roles existed: step 0 -> control
    cfg = json.loads((control / "config.json").read_text())
    del cfg["role"], cfg["control_of"]
    (control / "config.json").write_text(json.dumps(cfg))
    assert load_encoder(control).role == "control"
    with pytest.raises(ValueError, match="role must be one of"):
        save_released_encoder(_tiny("apc"), tmp_path / "bad", role="teacher")


def test_precomputed_features_carry_the_role_of_their_encoder(tmp_path):
    from speechssl.downstream import PrecomputedSource

    released = save_released_encoder(_tiny("apc"), tmp_path / "ctl", extra={"step": 0})
    for name, meta in (("base", {"encoder": "fbank", "kind": "baseline"}),
                       ("ctl", {"encoder": str(released), "kind": "released"}),
                       ("recorded", {"encoder": "x", "role": "ssl", "control_of": None}),
                       ("unknown", {"encoder": "somewhere/else"})):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "extract.json").write_text(json.dumps(meta))
    roles = {n: PrecomputedSource(tmp_path / n).describe()["role"] for n in ("base", "ctl", "recorded", "unknown")}
    assert roles == {"base": "baseline", "ctl": "control", "recorded": "ssl", "unknown": None}


def test_pretrain_records_the_role_of_its_release(tmp_path):
    from pathlib import Path

    from speechssl.cli.main import main
    from speechssl.corpora.synthetic import synthesize_corpus

    manifest = synthesize_corpus(tmp_path / "synth", backend="formant", speakers=2, utts_per_speaker=2)
    recipe = str(Path(__file__).parents[1] / "recipes/pretrain/apc_tiny.yaml")
    roles = {}
    for name, extra in (("random", ["train.max_steps=0", "train.control_of=apc"]), ("trained", ["train.max_steps=1"])):
        argv = ["pretrain", "--config", recipe, "--train", str(manifest), "--exp", str(tmp_path / name),
                *extra, "train.progress=false", "train.plot=false", "train.valid_every=0"]
        assert main(argv) == 0
        cfg = json.loads((tmp_path / name / "encoder" / "config.json").read_text())
        roles[name] = (cfg["role"], cfg["control_of"])
    assert roles == {"random": ("control", "apc"), "trained": ("ssl", None)}
    # naming what a trained encoder controls is a contradiction, refused before any work
    argv = ["pretrain", "--config", recipe, "--train", str(manifest), "--exp", str(tmp_path / "bad"),
            "train.max_steps=5", "train.control_of=apc"]
    assert main(argv) == 1 and not (tmp_path / "bad" / "encoder").exists()


def test_extract_layers_use_the_same_grammar(tmp_path):
    from speechssl.cli.main import main
    from speechssl.corpora.synthetic import synthesize_corpus

    manifest = synthesize_corpus(tmp_path / "synth", backend="formant", speakers=1, utts_per_speaker=2)
    released = save_released_encoder(_tiny("apc"), tmp_path / "apc", extra={"step": 0})
    out = tmp_path / "feats"
    assert main(["extract", "--encoder", str(released), "--input", str(manifest), "--out", str(out),
                 "--layers", "last,-2", "--format", "npy"]) == 0
    assert json.loads((out / "extract.json").read_text())["layers"] == ["last", "layer_3"]
