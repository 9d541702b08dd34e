"""Comparing features across models, layers and seeds (docs/architecture.md §6 "Comparing representations"): global
similarity (linear
CKA, SVCCA) with permutation p-values, one-to-one feature matching with a null and an FDR-controlled match set,
causal preservation of matches, and aligning two models' activations example by example on the same inputs.
Pure statistics on aligned activation matrices plus the alignment of token streams; running models and
interventions is the caller's (the tool glues this to the features family)."""

from .align import CharAlignment, align_by_chars
from .causal import STATUSES, causal_status, status_counts
from .matching import (
                       NULLS,
                       Matching,
                       assign,
                       correlations,
                       decoder_cosines,
                       fingerprint_baseline,
                       match_features,
                       random_rotation,
                       standardise,
)
from .similarity import (
                       Shuffle,
                       centered_gram,
                       cka_from_grams,
                       cka_map,
                       cka_test,
                       linear_cka,
                       permutation_test,
                       row_shuffler,
                       svcca,
                       svcca_test,
)
from .study import Comparison, LayerChoice, choose_layers, compare_sides, comparison_footprint, token_residual

__all__ = ["CharAlignment", "Comparison", "LayerChoice", "NULLS", "Matching", "STATUSES", "Shuffle", "align_by_chars",
           "assign", "causal_status", "centered_gram", "choose_layers", "cka_from_grams", "cka_map", "cka_test",
           "compare_sides", "comparison_footprint", "correlations", "decoder_cosines", "token_residual",
           "fingerprint_baseline", "linear_cka", "match_features", "permutation_test", "random_rotation",
           "row_shuffler", "standardise", "status_counts", "svcca", "svcca_test"]
