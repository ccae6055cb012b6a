"""The training engine and what every task's runs share: the trainer, checkpoints, the feature cache, inputs,
tracking, cost and metrics, run directories and their records. It imports no method and no task."""
