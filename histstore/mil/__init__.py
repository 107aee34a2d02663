"""Multiple-instance learning over frozen tile embeddings (HistCode, arXiv 2204.11994).

One job per module, imported directly (this file imports nothing, so importing
`histstore.mil.splits` or `histstore.mil.metrics` does not pull in torch):

- `segments`: softmax / sum / max / top-k over the tiles of each bag in a concatenated batch.
- `models`: gated attention (HistCode) and the baselines (mean, max, ABMIL, DSMIL, MIL-RNN),
  one interface, `build_model(name, in_dim, n_outputs, **cfg)`.
- `splits`: k folds grouped by case, stratified by label; train/val inside each fold.
- `metrics`: per-fold metrics and their mean +- sd across folds (numpy / sklearn / scipy).
- `train_config`: `TrainConfig`, the settings of a training run.
- `results`: `EpochRecord`, `Predictions`, `FoldResult` (what a fold returns).
- `evaluation`: batched forward passes in eval mode; logits -> predictions and metrics.
- `trainer`: `train_fold` (one fold: the loop, model selection on validation only, the loss).
- `cross_validation`: `run_cv` (splits grouped by case, then `train_fold` per fold).
"""
