"""The MCP tools: one module per tool (its input and result models, its function, its `ToolSpec`), and the
registry the server registers from. Adding a tool = one module here and one line in `TOOLS`."""

from . import (
               attention,
               attribute,
               baseline,
               compare_features,
               das,
               eval_das,
               find_features,
               jobs,
               list_saes,
               load_sae,
               locate,
               logit_lens,
               models,
               probe,
               report,
               runs,
               scrub,
               steer,
               sweep,
               tasks,
               train_sae,
)
from .base import ToolSpec

TOOLS: list[ToolSpec] = [
    tasks.DEFINE_TASK,
    tasks.LIST_TASKS,
    tasks.GET_TASK,
    models.LIST_MODELS,
    models.LOAD_MODEL,
    baseline.RUN_BASELINE,
    locate.LOCATE,
    attribute.ATTRIBUTE,
    scrub.SCRUB_HYPOTHESIS,
    das.TRAIN_DAS,
    eval_das.EVAL_DAS,
    train_sae.TRAIN_SAE,
    load_sae.LOAD_SAE,
    list_saes.LIST_SAES,
    find_features.FIND_FEATURES,
    compare_features.COMPARE_FEATURES,
    probe.PROBE,
    attention.ATTENTION,
    logit_lens.LOGIT_LENS,
    steer.STEER,
    sweep.SWEEP,
    runs.LIST_RUNS,
    runs.GET_RUN,
    report.REPORT,
    jobs.GET_JOB,
    jobs.CANCEL_JOB,
    jobs.LIST_JOBS,
]

__all__ = ["TOOLS", "ToolSpec"]
