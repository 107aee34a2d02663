"""Statistics of a run's predictions: what a reviewer asks of an AUC. numpy / scipy / pandas
only (no torch), so `runs show`, `compare` and reports compute them on demand, fast.

- `stats`: midranks, the AUC, DeLong's test for correlated AUCs (the fast algorithm of Sun &
  Xu 2014), case-stratified cluster bootstrap intervals (also paired), within-fold
  permutation p-values, Benjamini-Hochberg q-values, t intervals over seeds.
- `case_level`: patient-level metrics: slide scores averaged per case (per case and label,
  when a patient has tumour and normal slides), stored per fold as `case_*` metrics.
- `pooled`: the pooled test predictions of a run (every slide once, from the fold that
  tested it): intervals at slide and case level, paired comparison of two runs on the same
  splits, per-gene permutation tests of a gene run.

What is stored and what is computed: per-fold case metrics are rows of `metrics` (cheap,
and SQL sees them); intervals, paired tests and permutation p-values are computed from the
stored predictions whenever they are shown (deterministic: fixed seeds), never stored.
"""
