"""Evaluation and audits."""
