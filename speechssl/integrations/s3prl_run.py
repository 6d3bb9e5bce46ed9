"""Run s3prl's own ``run_downstream`` with speechssl encoders as upstreams.

Usage (same arguments as s3prl's ``run_downstream.py``)::

    python -m speechssl.integrations.s3prl_run -m train -u speechssl_local -k exp/apc/encoder \\
        -d emotion -p result/er_apc --device cpu \\
        -o "config.downstream_expert.datarc.root=/data/IEMOCAP_full_release,,config.downstream_expert.datarc.meta_data=/data/iemocap_meta"
    python -m speechssl.integrations.s3prl_run -m evaluate -e result/er_apc/dev-best.ckpt --device cpu

What this adds to ``python -m s3prl.run_downstream``:

* the compatibility shims of :mod:`speechssl.integrations.s3prl_compat` (current torchaudio and
  huggingface_hub), and ``speechssl_local`` registered in ``s3prl.hub``;
* ``--device cpu`` when no ``--device`` is given and CUDA is unavailable (s3prl defaults to cuda);
* for ``-d emotion`` without ``-c``: SUPERB's emotion config (the pip wheel does not ship
  s3prl's ``downstream/*/config.yaml``), written to ``<expdir>/speechssl_emotion_config.yaml``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
import yaml

log = logging.getLogger(__name__)


def superb_emotion_config(root: str = "IEMOCAP_full_release", meta_data: str = "meta_data") -> dict:
    """s3prl ``downstream/emotion/config.yaml`` (SUPERB ER: Linear(D,256) -> mean pooling -> Linear(256,4))."""
    return {
        "runner": {
            "total_steps": 30000, "gradient_clipping": 1, "gradient_accumulate_steps": 8, "log_step": 500,
            "eval_step": 1000, "save_step": 1000, "max_keep": 1, "eval_dataloaders": ["dev", "test"],
        },
        "optimizer": {"name": "TorchOptim", "torch_optim_name": "Adam", "lr": 1.0e-4},
        "downstream_expert": {
            "datarc": {
                "root": root, "test_fold": "fold1", "pre_load": True, "train_batch_size": 4,
                "eval_batch_size": 4, "num_workers": 0, "valid_ratio": 0.2, "meta_data": meta_data,
            },
            "modelrc": {
                "projector_dim": 256, "select": "UtteranceLevel",
                "UtteranceLevel": {"pooling": "MeanPooling"},
            },
        },
    }


def _value(argv: list[str], *flags: str) -> str | None:
    for i, a in enumerate(argv):
        if a in flags and i + 1 < len(argv):
            return argv[i + 1]
        for f in flags:
            if f.startswith("--") and a.startswith(f + "="):
                return a.split("=", 1)[1]
    return None


def prepare_argv(argv: list[str]) -> list[str]:
    """Add ``--device cpu`` / a default emotion config where s3prl's defaults cannot work here."""
    argv = list(argv)
    if _value(argv, "--device") is None and not torch.cuda.is_available():
        log.info("s3prl_run: CUDA is not available; adding --device cpu")
        argv += ["--device", "cpu"]
    resuming = _value(argv, "-e", "--past_exp") is not None
    if _value(argv, "-d", "--downstream") == "emotion" and _value(argv, "-c", "--config") is None and not resuming:
        expdir = _value(argv, "-p", "--expdir") or f"result/downstream/{_value(argv, '-n', '--expname')}"
        path = Path(expdir) / "speechssl_emotion_config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(superb_emotion_config(), sort_keys=False))
        log.info("s3prl_run: using SUPERB's emotion config %s (set datarc.root/meta_data with -o)", path)
        argv += ["-c", str(path)]
    return argv


def main(argv: list[str] | None = None) -> int:
    from speechssl.integrations.s3prl import register

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = prepare_argv(sys.argv[1:] if argv is None else argv)
    register()
    import s3prl.run_downstream as run_downstream

    saved = sys.argv
    sys.argv = ["s3prl.run_downstream", *argv]
    try:
        run_downstream.main()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
