"""Evaluation: embeddings now; diversity and quality metrics and Pareto aggregation to come (issue 5)."""
