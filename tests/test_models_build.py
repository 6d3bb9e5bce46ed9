"""build_model(init_weights=False): skips random init without touching global state; buffers stay right."""

from __future__ import annotations

import threading

import torch

from speechssl.models.base import _SkipRandomInit, build_model


def test_skipping_init_is_scoped_to_this_thread_and_leaves_torch_nn_init_alone():
    before = {name: getattr(torch.nn.init, name) for name in dir(torch.nn.init) if name.endswith("_")}
    seen = {}

    def other_thread():
        seen["filled"] = torch.nn.init.uniform_(torch.zeros(64), 1.0, 2.0)

    with _SkipRandomInit():
        assert {name: getattr(torch.nn.init, name) for name in before} == before  # nothing patched
        skipped = torch.nn.init.uniform_(torch.zeros(64), 1.0, 2.0)
        method = torch.zeros(64).normal_()
        kaiming = torch.nn.init.kaiming_uniform_(tensor=torch.zeros(4, 4))
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        ones = torch.nn.init.ones_(torch.zeros(3))  # deterministic fills still run
    assert float(skipped.abs().sum()) == 0 and float(method.abs().sum()) == 0 and float(kaiming.abs().sum()) == 0
    assert bool((seen["filled"] >= 1.0).all())  # another thread initialised normally meanwhile
    assert ones.tolist() == [1.0, 1.0, 1.0]
    assert bool((torch.nn.init.uniform_(torch.zeros(8), 1.0, 2.0) >= 1.0).all())  # and after the block


def test_buffers_that_are_not_saved_are_still_computed():
    cfg = {"name": "apc", "frontend": {"name": "fbank", "num_mel_bins": 20}, "num_layers": 1, "hidden_size": 8}
    torch.manual_seed(0)
    normal = build_model(cfg)
    skipped = build_model(cfg, init_weights=False)
    saved = set(normal.state_dict())
    unsaved = {n: b for n, b in normal.named_buffers() if n not in saved}
    assert unsaved  # the Kaldi window: not in the state dict, so loading cannot restore it
    other = dict(skipped.named_buffers())
    for name, value in unsaved.items():
        assert torch.equal(other[name], value), name


def test_build_loaded_is_strict_and_names_the_source():
    import pytest

    from speechssl.models.base import build_loaded

    cfg = {"name": "apc", "frontend": {"name": "logmel", "n_mels": 20}, "num_layers": 1, "hidden_size": 8}
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    model = build_loaded(cfg, state, "x.safetensors")
    assert not model.training and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    del state[next(iter(state))]
    with pytest.raises(KeyError, match=r"x.safetensors: weights do not fit model 'apc': missing \['"):
        build_loaded(cfg, state, "x.safetensors", KeyError)
