"""The MCP surface: the MCPServer app, its lifespan, and the registration of tools, prompts, resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer

from .. import __version__
from ..prompts import templates
from ..runtime.context import AppContext
from ..tools import (attribute_tool, baseline_tool, das_eval_tool, das_tool, job_tools, locate_tool, model_tools,
                     run_tools, scrub_tool, task_tools)
from ..tools.runner import JobView
from .registration import register_tool

INSTRUCTIONS = f"""mcp-interp {__version__}: mechanistic interpretability on real language models.

Workflow (each step's result says what to do next):
1. list_tasks / get_task, or define_task: a causal task (variables, mechanisms, templates, counterfactual
   generators, named positions, metric). Specs are validated against the tokenizer before any weights load.
2. run_baseline(model, task): does the model solve it? Only intervene on behaviour the model has.
   Check that each counterfactual generator changes the label and the model follows it.
3. locate(model, task, sites, positions): activation patching over layers x positions x sites; read `flow`,
   `best_cells` and the heatmaps.
4. attribute(model, task, method, level): rank heads / MLPs / neurons / positions / edges; read the faithfulness
   curve (CPR, CMD) and `circuit`. Cheap methods (atp, eap_ig) can be fooled: compare_exact=true checks them.
5. train_das(model, task, variable, site, layer | from_locate_run, k): is the variable a (low-dim) subspace there?
   Read held-out test_iia vs the random_rotation / full_vector controls; k=[1,2,4,...] gives the rank curve's knee.
   eval_das(run_id) re-tests a saved rotation on new data or another counterfactual.
6. scrub_hypothesis(model, task, hypothesis): causal scrubbing of a circuit hypothesis (nodes, parents, what
   each represents); read loss_recovered (1 = fully explained) vs the zero/mean ablations and per-node contributions.
Heavy tools run as jobs: they wait up to wait_seconds (default 50) sending progress, then return
{{status: "running", job: {{job_id}}}}; collect with get_job(job_id, wait_seconds). Identical requests return
the stored run (force=true recomputes). Every result is stored: list_runs / get_run, and files are MCP
resources artifact://<run_id>/<file> (plots are PNG). Cite run ids in reports.
Models: smollm2-135m is bundled (offline); list_models shows the rest.
Prompts plan_experiment, run_experiment, interpret_experiment walk through plan -> run -> interpret."""


def build_server(store: str | Path | None = None, memory_budget_mb: float | None = None,
                 device: str | None = None) -> MCPServer:
    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AppContext]:
        app = AppContext.create(store, memory_budget_mb, device)
        try:
            yield app
        finally:
            app.close()

    server = MCPServer("mcp-interp", instructions=INSTRUCTIONS, lifespan=lifespan)
    _register_tools(server)
    _register_prompts(server)
    _register_resources(server)
    return server


def _register_tools(server: MCPServer) -> None:
    t = task_tools
    register_tool(server, t.define_task, name="define_task", input_model=t.DefineTaskInput,
                  output_model=t.DefineTaskOutput, description=(
                      "Define a causal task: input variables (values or range), mechanisms (restricted expressions "
                      "like \"IO if order == 'ABB' else S\" or lookup tables), constraints, prompt templates with "
                      "{variable} slots, the answer template (mind the leading space), counterfactual generators "
                      "(resample | resample_all | swap | assign), named positions (by variable slot or literal text; "
                      "END is implicit) and the metric (logit_diff | prob | accuracy | prob_diff with answer_set). "
                      "Validated against validate_with_model's tokenizer: single-token answers, resolvable positions, "
                      "generators that change the answer when they claim to, enough distinct examples. Errors name "
                      "the field and the examples. get_task('ioi') shows a complete example spec."))
    register_tool(server, t.list_tasks, name="list_tasks", input_model=None, output_model=t.ListTasksOutput,
                  read_only=True, description="List built-in and defined tasks with their variables, "
                  "counterfactual generators, named positions and metric.")
    register_tool(server, t.get_task, name="get_task", input_model=t.GetTaskInput, output_model=t.GetTaskOutput,
                  read_only=True, description="A task's full spec and a few rendered clean/counterfactual pairs with "
                  "labels; with `model`, also the tokens and resolved positions. Use it as a template for define_task.")
    m = model_tools
    register_tool(server, m.list_models, name="list_models", input_model=None, output_model=m.ListModelsOutput,
                  read_only=True, description="Available models (bundled, toy, local), which are loaded, memory use, device.")
    register_tool(server, m.load_model, name="load_model", input_model=m.LoadModelInput, output_model=m.LoadModelOutput,
                  description="Load a model into the pool now (tools load lazily anyway) and show its config: layers, "
                  "heads, d_model, grouped-query KV heads. The first SmolLM2 load converts the GGUF (~1 min); later "
                  "starts read a cache.")
    b = baseline_tool
    register_tool(server, b.run_baseline, name="run_baseline", input_model=b.RunBaselineInput,
                  output_model=b.RunBaselineOutput, progress=True, description=(
                      "Does the model solve the task? Accuracy, logit difference (answer vs counterfactual answer) and "
                      "answer probability on n examples with 95% bootstrap CIs, the same on counterfactual prompts, and "
                      "per counterfactual generator how often the label changes and the model follows it. Returns a "
                      "verdict: do not run interventions on a task the model does not solve. Runs as a job (see "
                      "wait_seconds / get_job); stores examples.json and a histogram plot."))
    lt = locate_tool
    register_tool(server, lt.locate, name="locate", input_model=lt.LocateInput, output_model=lt.LocateOutput,
                  progress=True, description=(
                      "Where does the information live? Exact activation patching over layers x positions x sites "
                      "(resid_pre, attn_out, mlp_out, z = per head) on clean/counterfactual pairs. Denoising (default) "
                      "patches the clean activation into the counterfactual run; the normalised effect "
                      "(m_patched - m_cf) / (m_clean - m_cf) is 1 where one cell restores the behaviour and 0 where it "
                      "does nothing, with 95% bootstrap CIs over examples. Positions: the task's named positions, all "
                      "tokens, or a list. Returns the best cells per site, the layer ranges where the residual stream "
                      "carries the information (`flow`), heatmaps (PNG resources) and the full grid (safetensors). "
                      "The engine equals a hook-per-cell loop and skips cells that cannot change anything. Run "
                      "run_baseline first. Runs as a job; identical requests return the stored run."))
    at = attribute_tool
    register_tool(server, at.attribute, name="attribute", input_model=at.AttributeInput, output_model=at.AttributeOutput,
                  progress=True, description=(
                      "Which components carry the behaviour, and is the circuit they form faithful? Scores attention "
                      "heads, MLP layers, neurons of one layer, named positions, or edges (sender output -> receiver "
                      "q/k/v/MLP input) with exact patching or a cheap estimate (atp, atp_star, grad, grad_act, ig, "
                      "act_diff; eap, eap_ig for edges). Scores are normalised denoising effects (1 = the unit alone "
                      "restores the clean behaviour), with bootstrap CIs for node levels. Then evaluates the top-k% "
                      "circuits (k = 0.1..100) with everything outside patched from the counterfactual: faithfulness "
                      "f = (m(C) - m(empty)) / (m(full) - m(empty)), CPR and CMD as MIB defines them, and the smallest "
                      "circuit with f >= 0.8. compare_exact=true also runs exact patching and reports the correlation "
                      "and the cost of each. Plots: layer x head heatmap, faithfulness curve, circuit graph. Runs as a "
                      "job; identical requests return the stored run."))
    sh = scrub_tool
    register_tool(server, sh.scrub_hypothesis, name="scrub_hypothesis", input_model=sh.ScrubInput,
                  output_model=sh.ScrubOutput, progress=True, description=(
                      "Test a circuit hypothesis by causal scrubbing (Chan et al. 2022): every activation the "
                      "hypothesis says cannot matter is resampled from other inputs (those that agree on what it "
                      "says matters), and the score is the fraction of the loss recovered, (L_random - L_scrubbed) / "
                      "(L_random - L_model), with the same for the task metric, over `seeds` resampling seeds. "
                      "Hypothesis JSON: `interp` = named values of the task's causal model (a variable or restricted "
                      "expression); `nodes` = model nodes {name, kind: embed|head|mlp|resid, layer, head, position "
                      "(task position name, token index, list, or 'all'), interp (what it represents; default "
                      "'input'), "
                      "parents (nodes whose outputs matter for it; omitted = leaf) or, for heads, inputs {q,k,v}}; "
                      "`output.parents` = nodes that matter directly. Example: {\"interp\": [{\"name\": \"x\", "
                      "\"value\": \"x\"}], \"nodes\": [{\"name\": \"mover\", \"kind\": \"head\", \"layer\": 0, "
                      "\"head\": 0, \"position\": \"END\", \"interp\": \"x\", \"parents\": [\"emb\"]}, {\"name\": "
                      "\"emb\", \"kind\": \"embed\", \"position\": \"X\", \"interp\": \"x\"}], \"output\": "
                      "{\"parents\": [\"mover\"]}}. Or 'everything' / 'nothing' (the identities: 1 and ~0). Also "
                      "reports zero- and mean-ablation of the same unimportant inputs (off-distribution, for contrast) "
                      "and per node the cost of dropping its claim or sharpening its interpretation. Stores "
                      "hypothesis.json, per-example losses (safetensors), the hypothesis graph coloured by "
                      "contribution and a recovered-fraction bar chart (PNG resources). Runs as a job; identical "
                      "requests return the stored run."))
    dt = das_tool
    register_tool(server, dt.train_das_tool, name="train_das", input_model=dt.TrainDasInput,
                  output_model=dt.TrainDasOutput, progress=True, description=(
                      "Is a task variable represented along a subspace of one site? Distributed alignment search "
                      "(DAS): trains a d x k rotation (model frozen) at one site (resid_pre/resid_post/attn_out/"
                      "mlp_out at `layer`, or z of one head) and named position so that interchanging that subspace "
                      "from a source prompt makes the model output the causal model's counterfactual label. Reports "
                      "train and held-out IIA (no base prompt shared between splits: shared_bases = 0) with 95% "
                      "bootstrap CIs, and controls on the same test split: a random rotation of the same k and "
                      "full-vector patching. k as a list runs a rank sweep (IIA vs k, knee); method='boundless' "
                      "learns k. from_locate_run takes site, layer, head and position from a locate run's best cell. "
                      "Stores rotation.safetensors, split.json (train/test base prompts), learning-curve, rank-curve "
                      "and IIA-vs-controls plots. Runs as a job; identical requests return the stored run."))
    register_tool(server, das_eval_tool.eval_das_tool, name="eval_das", input_model=das_eval_tool.EvalDasInput,
                  output_model=das_eval_tool.EvalDasOutput, progress=True, description=(
                      "Evaluate the rotation saved by a train_das run on a freshly built interchange dataset (by "
                      "default the run's task, variable, counterfactual, n and seed; another task, variable, "
                      "counterfactual or seed tests transfer). Returns IIA with a 95% bootstrap CI, the random-rotation "
                      "and full-vector controls, and how many evaluated base prompts were in the run's training split. "
                      "Runs as a job."))
    r = run_tools
    register_tool(server, r.list_runs, name="list_runs", input_model=r.ListRunsInput, output_model=r.ListRunsOutput,
                  read_only=True, description="Stored runs, newest first, filtered by task / model / tool / status, "
                  "with their key metrics.")
    register_tool(server, r.get_run, name="get_run", input_model=r.GetRunInput, output_model=r.GetRunOutput,
                  read_only=True, description="One stored run: its result, manifest (versions, model weight hash, task "
                  "hash, parameters, seed, timings) and file URIs (artifact://<run_id>/<file>, readable as resources).")
    j = job_tools
    register_tool(server, j.get_job, name="get_job", input_model=j.GetJobInput, output_model=JobView, progress=True,
                  read_only=True, description="Long-poll a job: waits up to wait_seconds, then returns its status, "
                  "progress and, once complete, the tool's full result.")
    register_tool(server, j.cancel_job, name="cancel_job", input_model=j.CancelJobInput, output_model=JobView,
                  description="Cancel a queued or running job (cooperative: it stops at the next checkpoint).")
    register_tool(server, j.list_jobs, name="list_jobs", input_model=j.ListJobsInput, output_model=j.ListJobsOutput,
                  read_only=True, description="Jobs of this store (including ones interrupted by a server restart).")


def _register_prompts(server: MCPServer) -> None:
    @server.prompt(name="plan_experiment", description="Plan an interpretability experiment: objective, falsifiable "
                   "hypotheses, analysis plan with gates.")
    def plan_experiment(question: str, model: str = "smollm2-135m", task: str = "ioi") -> str:
        return templates.render("plan", question=question, model=model, task=task)

    @server.prompt(name="run_experiment", description="Run a planned experiment step by step with the tools, "
                   "respecting the gates.")
    def run_experiment(question: str, model: str = "smollm2-135m", task: str = "ioi") -> str:
        return templates.render("run", question=question, model=model, task=task)

    @server.prompt(name="interpret_experiment", description="Interpret finished runs into a report whose every "
                   "claim cites an artifact.")
    def interpret_experiment(question: str, model: str = "smollm2-135m", task: str = "ioi", run_ids: str = "") -> str:
        return templates.render("interpret", question=question, model=model, task=task, run_ids=run_ids or "(all runs)")


MIME = {".json": "application/json", ".png": "image/png", ".md": "text/markdown", ".txt": "text/plain",
        ".safetensors": "application/octet-stream", ".csv": "text/csv"}


def _register_resources(server: MCPServer) -> None:
    def reader(ext: str):
        async def read(run_id: str, name: str, ctx: Context) -> str | bytes:
            data = run_tools.read_artifact(ctx.request_context.lifespan_context, run_id, f"{name}{ext}")
            return data.decode() if MIME[ext].startswith(("text/", "application/json")) else data
        return read

    for ext, mime in MIME.items():
        server.resource(f"artifact://{{run_id}}/{{name}}{ext}", name=f"artifact{ext}", mime_type=mime,
                        description=f"A {ext} file of a stored run.")(reader(ext))
