"""Frontends: waveform -> frames. Importing this package registers the built-in frontends."""

from speechssl.features.base import FRONTENDS, SAMPLE_RATE, Frontend, FrontendSpec, build_frontend, num_frames

__all__ = ["FRONTENDS", "SAMPLE_RATE", "Frontend", "FrontendSpec", "build_frontend", "num_frames"]
