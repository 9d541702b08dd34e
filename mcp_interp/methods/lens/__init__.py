"""The logit lens and the tuned lens: what each layer's residual stream predicts, read through the final norm and
the unembedding (tuned: through a trained affine translator first)."""

from .lens import LensInputs, LensResult, lens_footprint, logit_lens, point_hook, point_label
from .tuned import TunedLens, TunedSpec, apply_translator, train_tuned_lens, tuned_footprint

__all__ = ["LensInputs", "LensResult", "TunedLens", "TunedSpec", "apply_translator", "lens_footprint", "logit_lens",
           "point_hook", "point_label", "train_tuned_lens", "tuned_footprint"]
