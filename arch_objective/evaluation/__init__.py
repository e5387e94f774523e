"""Zero-shot evaluation: rank classification, T0-Eval, the lm-evaluation-harness adapter, reports."""
