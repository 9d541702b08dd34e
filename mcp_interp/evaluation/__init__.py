"""Evaluation harnesses that grade methods against models with known answers (DESIGN §4)."""
