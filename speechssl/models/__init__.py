"""SSL model families. Importing this package registers every family in ``MODELS``."""

from speechssl.models.base import MODELS, EncoderOutput, LossOutput, ModelSpec, SSLModel, build_model

__all__ = ["MODELS", "EncoderOutput", "LossOutput", "ModelSpec", "SSLModel", "build_model"]

# One import per family (each registers itself):
import speechssl.models.apc  # noqa: E402, F401
import speechssl.models.barlow  # noqa: E402, F401
import speechssl.models.bestrq  # noqa: E402, F401
import speechssl.models.byola  # noqa: E402, F401
import speechssl.models.cpc  # noqa: E402, F401
import speechssl.models.data2vec2  # noqa: E402, F401
import speechssl.models.hubert  # noqa: E402, F401
import speechssl.models.mae  # noqa: E402, F401
import speechssl.models.simclr  # noqa: E402, F401
import speechssl.models.tera  # noqa: E402, F401
import speechssl.models.wav2vec2  # noqa: E402, F401
