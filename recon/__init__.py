"""recon: how much of a sentence survives in its BERT [CLS] vector, and can we get it back?"""

from recon.model import ReconConfig, ReconModel

__all__ = ["ReconConfig", "ReconModel"]
