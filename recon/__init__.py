"""recon: how much of a sentence survives in its BERT [CLS] vector, and can we get it back?"""

import recon.warm_decoder  # noqa: F401  (registers --decoder-type encoder-warm)
from recon.model import ReconConfig, ReconModel

__all__ = ["ReconConfig", "ReconModel"]
