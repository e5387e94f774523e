"""Prompted data: promptsource templates, dataset loaders (local original files or HF
datasets), the T0 held-out suite and the T0 training mixture."""
