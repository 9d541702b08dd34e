"""The research-loop skill and the prompts name every tool there is, and no tool that is not."""

import re
from importlib.resources import files

import pytest
import yaml

from mcp_interp.tools import TOOLS

TOOL_NAMES = {spec.name for spec in TOOLS}
# Verbs tool names start with; a snake_case word starting with one of these is read as a tool's name...
VERBS = sorted({name.split("_")[0] for name in TOOL_NAMES if "_" in name})
# ...except these argument and field names, which the texts mention as such
NOT_TOOLS = {"run_id", "run_ids", "compare_exact"}  # argument names that read like tools


def text(kind: str, name: str) -> str:
    return (files("mcp_interp") / kind / name).read_text(encoding="utf-8")


SKILL = text("skills", "interp-research-loop.md")
PROMPTS = {p: text("prompts", f"{p}.md") for p in ("plan", "run", "interpret")}


def tool_like(t: str) -> set[str]:
    """Words that name a tool: `word(` calls and snake_case words starting with a tool verb."""
    calls = set(re.findall(r"\b([a-z][a-z0-9_]*)\(", t))
    verbed = set(re.findall(rf"\b((?:{'|'.join(VERBS)})_[a-z0-9_]+)\b", t))
    return (calls | verbed) - NOT_TOOLS


def mentioned(name: str, t: str) -> bool:
    return re.search(rf"(?<![a-z0-9_]){re.escape(name)}(?![a-z0-9_])", t) is not None


@pytest.mark.parametrize("where", ["skill", "run_experiment"])
def test_every_tool_is_named(where):
    t = SKILL if where == "skill" else PROMPTS["run"]
    missing = sorted(n for n in TOOL_NAMES if not mentioned(n, t))
    assert not missing, f"{where} does not name the tools {missing}: say when to use each"


@pytest.mark.parametrize("where", ["skill", *PROMPTS])
def test_every_tool_named_exists(where):
    t = SKILL if where == "skill" else PROMPTS[where]
    assert tool_like(t) - TOOL_NAMES == set()


def test_the_check_sees_a_missing_or_unknown_tool():
    assert tool_like("call run_baseline, then rank_heads(model) and get_everything") == {
        "run_baseline", "rank_heads", "get_everything"}
    assert not mentioned("locate", "relocate the run_id") and mentioned("locate", "then `locate`.")


def test_skill_front_matter_is_what_claude_code_reads():
    assert SKILL.startswith("---\n")
    meta = yaml.safe_load(SKILL.split("---\n")[1])
    assert re.fullmatch(r"[a-z0-9-]{1,64}", meta["name"]) and meta["name"] == "interp-research-loop"
    assert 0 < len(meta["description"]) <= 1024
