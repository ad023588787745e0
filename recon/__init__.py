"""recon: how much of a sentence survives in its BERT [CLS] vector, and can we get it back?"""

# every decoder class registers itself on import; a checkpoint of any class then loads from `import recon`
import recon.corrector  # noqa: F401  (--decoder-type corrector, trained by --base-model)
import recon.warm_decoder  # noqa: F401  (--decoder-type encoder-warm)
from recon.model import ReconConfig, ReconModel

__all__ = ["ReconConfig", "ReconModel"]
