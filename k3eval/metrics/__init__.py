"""Automatic metrics: FID, KID, IS (TF-ported Inception-v3), CLIP score (open_clip or transformers), CMMD, GenEval and
T2I-CompBench.

Layers: `functional` (pure functions on features), `classes` (torchmetrics Metric classes that accumulate and
gather across processes), `inception`/`clip` (networks and their synthetic test weights), `preprocess` (image
decoding and resize protocols), `api` (the interface of extractors and metrics), `registry` (metric names),
`inception_metrics` and `clip_metrics` (the built-in metrics), `geneval` and `t2i_compbench` (compositional
benchmarks: rules in `geneval_rules`, `compbench_rules`, `phrases`; models in `vision_models`; scores over tasks in
`breakdown`; GenEval's folder layout in `geneval_layout`), `extract` + `cache` + `verify` (cached features of
verified images), `reference` (reference statistics), `options` (checks of the options), `score` (`k3eval score`),
`stage` (benchmark stage `score`), `cli`. Importing this package imports no torch.
"""
