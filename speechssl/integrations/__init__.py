"""Adapters to other toolkits, kept in one place.

* :mod:`speechssl.integrations.s3prl` — any speechssl encoder as the s3prl 0.4.18 upstream
  ``speechssl_local`` (registered at run time by ``register()``; s3prl's files are not edited).
* :mod:`speechssl.integrations.s3prl_compat` — the shims s3prl 0.4.18 needs with current
  torchaudio / huggingface_hub, applied before importing s3prl.
* :mod:`speechssl.integrations.s3prl_run` — ``python -m speechssl.integrations.s3prl_run ...``:
  s3prl's own ``run_downstream`` with speechssl encoders.
* :mod:`speechssl.integrations.s3prl_apc` — ``speechssl export s3prl-apc``: an APC encoder as a
  checkpoint s3prl's ``apc_local`` loads.
* :mod:`speechssl.integrations.s3prl_tera` — ``speechssl export s3prl-tera``: a TERA / Mockingjay
  encoder as a checkpoint s3prl's ``tera_local`` / ``mockingjay_local`` load, and the import back.
"""
