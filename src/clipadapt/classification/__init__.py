"""The classification task: zero-shot runs, training runs, re-evaluation, prediction, robustness and its report
sections. It never imports the captioning task (import-linter checks it)."""
