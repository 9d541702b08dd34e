"""Features: SAEs (sae-lens objects trained on activations we collect), their quality, feature sources (SAE
latents, MLP neurons, DAS directions), ranking features by how well they separate a task variable, and causal
tests through interventions that keep the error term (docs/architecture.md §6 "Features")."""

from .activations import FEATURE_KINDS, Activations, activations_at, check_feature_site, collect_activations, site_activations, stop_layer
from .corpus import SHAKESPEARE, random_windows, read_texts, shakespeare_files, token_windows
from .find import INTERVENTIONS, CausalPair, CausalRuns, Ranking, benjamini_hochberg, causal_effects, rank_features
from .quality import match_directions, reconstruction_stats, spliced_loss
from .sae import (ARCHITECTURES, NORMALIZATIONS, Architecture, Normalize, TrainReport, encode, load_sae, make_training_sae, reconstruct,
                  sae_architecture, sae_hook_name, save_sae, train_sae)
from .sources import DirectionFeatures, NeuronFeatures, SAEFeatures, feature_values, intervention_hook, source_hooks
from .transcoder import (SparsifyTranscoder, TranscoderFeatures, is_transcoder_dir, load_transcoder, reading,
                         transcoder_width)
from . import pretrained

__all__ = ["ARCHITECTURES", "Activations", "Architecture", "CausalPair", "CausalRuns", "DirectionFeatures", "FEATURE_KINDS",
           "INTERVENTIONS", "NORMALIZATIONS", "activations_at", "NeuronFeatures", "Normalize", "Ranking", "SAEFeatures", "SHAKESPEARE", "TrainReport",
           "benjamini_hochberg", "causal_effects", "check_feature_site", "collect_activations", "encode",
           "feature_values", "intervention_hook", "is_transcoder_dir", "load_transcoder", "pretrained", "reading",
           "source_hooks", "SparsifyTranscoder", "TranscoderFeatures", "transcoder_width", "random_windows", "load_sae", "make_training_sae", "match_directions", "rank_features",
           "read_texts", "reconstruct", "reconstruction_stats", "sae_architecture", "sae_hook_name", "save_sae",
           "shakespeare_files", "site_activations", "spliced_loss", "stop_layer", "token_windows", "train_sae"]
