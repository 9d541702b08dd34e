"""Evaluation harnesses that grade methods against models with known answers (docs/architecture.md §7)."""
