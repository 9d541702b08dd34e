"""Linear probes: is a task variable linearly decodable from one site, layer by layer, and more than a control task
(Hewitt & Liang 2019) would be?

The torch and scikit-learn modules load on the first use of one of their names (`lazy_exports`)."""

from ... import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    ".probe": ("LayerProbe", "ProbeStudy", "control_labels", "probe_footprint", "train_probes", "PROBE_KINDS"),
})

__all__ = ["LayerProbe", "PROBE_KINDS", "ProbeStudy", "control_labels", "probe_footprint", "train_probes"]
