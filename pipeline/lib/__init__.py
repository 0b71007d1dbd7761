"""The libraries the stages share. Each module is one idea; none imports a stage.

Layers, each importing only those above it:

- ``pipeline.config``: the params schema (imports nothing of the pipeline)
- ``runtime`` (command line, logging, threads, seeds, user errors) and ``outputs`` (atomic
  writes, provenance inside outputs, run records beside them)
- ``mixtures`` (names and weights; no torch), ``tokens`` (token files, documents, training and
  evaluation orders), ``stats`` (proxy-vs-truth statistics; numpy only)
- ``pool`` (checkpoints memory-mapped, validated), ``models`` (build, load, save HF folders)
- ``training`` (the continued-pretraining loop), ``scoring`` (streaming perplexity and
  bits-per-byte), ``merging`` (in-place weighted averages through the fused kernel)
- ``sweep`` (score many mixtures by merging: the proxy stage's engine)
"""
