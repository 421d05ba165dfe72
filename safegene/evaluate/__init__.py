"""Evaluation: data loading, generation backends, judges, metrics and reports."""
