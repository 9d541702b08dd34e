"""artifacts.report on hand-made runs (no model): which runs are chosen, the generic section, provenance, errors."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import pytest

from mcp_interp.artifacts.report import RUN_ID, ReportError, build_report, select_runs
from mcp_interp.artifacts.report_sections import num
from mcp_interp.artifacts.store import ArtifactStore


def _run(store: ArtifactStore, tool: str, task: str = "t", model: str = "m", result: dict | None = None,
         params: dict | None = None, seed: int | None = 7, metrics: dict | None = None, fail: bool = False) -> str:
    h = store.create_run(tool, task, model, params or {"x": tool}, seed=seed, model_info={"weight_hash": "w" * 16},
                         task_hash="h" * 16)
    if fail:
        h.fail("boom")
    else:
        h.finish(result or {"summary": f"{tool} summary 0.25"}, metrics=metrics or {})
    return h.run_id


def test_newest_complete_run_per_tool_and_the_runs_they_name(tmp_path):
    store = ArtifactStore(tmp_path)
    sae = _run(store, "train_sae", task="corpus", model="m")
    old = _run(store, "mystery")
    new = _run(store, "mystery", metrics={"score": 0.5})
    _run(store, "mystery", fail=True)  # newest, but failed: never chosen
    feats = _run(store, "find_features", params={"sae": sae}, result={"summary": "old-format result"})
    _run(store, "report")  # an earlier report is not a finding
    runs, warnings = select_runs(store, task="t", model="m")
    # research-loop order (the SAE before the features read from it), unknown tools last; the older 'mystery' left out
    assert [r.run_id for r in runs] == [sae, feats, new] and old not in {r.run_id for r in runs} and not warnings


def test_generic_section_for_unknown_tools_and_old_results(tmp_path):
    store = ArtifactStore(tmp_path)
    new = _run(store, "mystery", metrics={"score": 0.5})
    # a locate run whose stored result lacks the fields today's locate section reads
    loc = _run(store, "locate", result={"summary": "strongest cell 0.75"}, metrics={"top_effect": 0.75})
    rep = build_report(store, run_ids=[new, loc])
    md = rep.markdown
    assert "mystery summary 0.25" in md and "| score | 0.500 |" in md and "| top_effect | 0.750 |" in md
    assert any(loc in w and "summary and key metrics" in w for w in rep.warnings)  # said, not silently dropped
    assert set(RUN_ID.findall(md)) == {new, loc, rep.record.run_id}
    # the provenance row of each run: seed, weight hash and task hash from its manifest
    row = next(line for line in md.splitlines() if line.startswith(f"| `{loc}` | locate"))
    assert "| 7 |" in row and "`wwwwwwwwwwww`" in row and "`hhhhhhhhhhhh`" in row
    stored = store.get_run(rep.record.run_id)
    assert stored.tool == "report" and stored.status == "complete"
    assert {"report.md", "report.html", "runs.json"} <= set(store.list_files(stored.run_id))


def test_refusals_name_the_field(tmp_path):
    store = ArtifactStore(tmp_path)
    failed = _run(store, "locate", fail=True)
    with pytest.raises(ReportError) as e:
        build_report(store, run_ids=["20990101-000000-abcdef"])
    assert e.value.field == "run_ids" and "list_runs" in str(e.value)
    with pytest.raises(ReportError) as e:
        build_report(store, run_ids=[failed])
    assert e.value.field == "run_ids" and "failed" in str(e.value)
    with pytest.raises(ReportError) as e:
        build_report(store, task="t", model="other")
    assert e.value.field == "task"
    with pytest.raises(ReportError) as e:
        build_report(store)
    assert e.value.field == "run_ids"
    assert not store.list_runs(tool="report")  # a refused request stores nothing


def test_numbers_undefined_in_a_result_read_n_a():
    assert num(None) == num(math.nan) == num(math.inf) == "n/a"
    assert num(0.123456) == "0.12" and num(3) == "3" and num(2e-5) == "2.0e-05"


def test_markdown_carries_no_markup_from_client_text():
    """Titles, task and position names reach the sections verbatim: report.md must not turn them into tags or links."""
    from mcp_interp.artifacts.report import to_markdown
    from mcp_interp.artifacts.report_sections import Figure, Heading, Para, Table

    hostile = "<script>alert(1)</script> <img src=x onerror=alert(1)> [click](javascript:alert(1))"
    md = to_markdown([Heading(hostile, 1), Para(f"task `{hostile}` **bold**"), Table(["position"], [[hostile]]),
                      Figure("20990101-000000-abcdef", "x.png", hostile)])
    assert "<script" not in md and "<img" not in md and "](javascript:" not in md
    assert "`" in md and "**bold**" in md  # the sections' own formatting stays
    assert md.count("](fig-20990101-000000-abcdef-x.png)") == 1  # the one link is ours


def test_html_renders_the_markdown_and_no_client_markup():
    """report.html is report.md through a markdown renderer: tables and code render, while client text (a title,
    a task or position name) cannot open a tag, an event handler or a javascript: link."""
    from mcp_interp.artifacts.report import Figure, Heading, Para, Table, to_html, to_markdown

    hostile = "<script>alert(1)</script> <img src=x onerror=alert(2)> [go](javascript:alert(3)) <b>b</b>"
    blocks = [Heading(hostile, 1), Para(f"`code` and **bold** {hostile}"), Table(["name", "value"], [[hostile, "1.0"]]),
              Figure("20260101-000000-abcdef", "plot.png", hostile)]
    page = to_html(blocks, hostile, {"fig-20260101-000000-abcdef-plot.png": b"\x89PNG"})
    assert "<table>" in page and "<code>code</code>" in page and "<strong>bold</strong>" in page
    tags = _tags(page)
    assert {t for t, _ in tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "p", "code", "strong",
                                    "table", "thead", "tbody", "tr", "th", "td", "figure", "img", "figcaption"}
    assert not [a for _, attrs in tags for a, v in attrs
                if a.startswith("on") or (a in ("href", "src") and not (v or "").startswith("data:image/png"))]
    assert [t for t, _ in tags].count("img") == 1 and "&lt;script&gt;" in page
    assert "<script" not in to_markdown(blocks)


def _tags(page: str) -> list[tuple[str, list]]:
    """Every start tag of an HTML page with its attributes, as a browser's tokenizer reads them."""
    found: list[tuple[str, list]] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))
    Tags().feed(page)
    return found
