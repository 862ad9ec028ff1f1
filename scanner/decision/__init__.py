"""The scan's decision: evidence measured per label (evidence.py), its statistics (statistics.py), and the
rules that turn it into flagged labels and a model-level score (rules.py)."""
