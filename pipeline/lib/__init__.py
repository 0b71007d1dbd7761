"""The libraries the stages share. Each module is one idea; none imports a stage.

Layers, each importing only those above it:

- ``pipeline.params``: the params schema, a module per section (imports nothing of the pipeline)
- ``paramtrace`` (which params a stage reads, for the test of dvc.yaml's ``params:``)
- ``runtime`` (command line, logging, threads, seeds, user errors) and ``outputs`` (atomic
  writes, provenance inside outputs, run records beside them)
- ``mixtures`` (names and weights; no torch), ``plans`` (what a validation mixture's model
  trains on, read back from the plan stage's files), ``tokens`` (token files, documents, training and
  evaluation orders), ``stats`` (proxy-vs-truth statistics; numpy only)
- ``checkpoint`` (one model folder's safetensors: headers, mapping, zero-copy views), ``models``
  (build, load, save HF folders), ``pool`` (K checkpoints validated against the seed, and where
  merges read them: pages dropped behind, kept mapped, or copied to the GPU)
- ``training`` (the continued-pretraining loop), ``scoring`` (streaming perplexity and
  bits-per-byte), ``merging`` (in-place weighted averages through the fused kernel)
- ``sweep`` (score many mixtures by merging: the proxy stage's engine)
"""
