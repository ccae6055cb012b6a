"""Image captioning: a frozen CLIP image tower feeding a causal language model through a trained bridge.

Lives beside classification and reuses its registry, configs, run directories, engine and reports.
"""
