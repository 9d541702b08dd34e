"""Prompt templates (markdown files beside this module) rendered with str.format-style fields."""

from __future__ import annotations

from importlib.resources import files


def render(name: str, **fields: str) -> str:
    text = (files(__package__) / f"{name}.md").read_text()
    return text.format(**fields)
