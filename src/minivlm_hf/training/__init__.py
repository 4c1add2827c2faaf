"""Training and evaluation of every MiniVLM stage on ``transformers.Trainer``.

- :mod:`.collators`: ``rows -> batch`` callables of every stage (detector, pre-training, captioning, VQA, retrieval,
  NLVR), seeded per batch so that resumed runs are exact;
- :mod:`.features`: TEE feature extraction (OSCAR style), oracle features, the in-memory ``RegionStore`` and the
  per-task example tables;
- :mod:`.feature_shards`: the same extraction data parallel into parquet shards (``minivlm-hf data features``);
- :mod:`.streamed_examples`: the fusion stages' training rows streamed from such shards (``data.stream``);
- :mod:`.data_setup`: ``RecipeData``, the datasets / tokenizer / detector / features a recipe config describes;
- :mod:`.recipes`: the recipe config, models, ``run_stage`` (train, save, evaluate, ``metrics.json``);
- :mod:`.trainers`: ``Trainer`` subclasses for detection and captioning evaluation, metrics, callbacks;
- :mod:`.evaluation`: held-out evaluation loops (mAP, CIDEr-D, VQA accuracy, retrieval R@K, NLVR accuracy);
- :mod:`.demo` / :mod:`.report`: the end-to-end demo, report.md and the gallery.

Nothing is imported here eagerly (the submodules pull in torch, datasets and transformers).
"""
