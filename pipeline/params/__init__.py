"""The params.yaml schema: one module per section, validated with pydantic; nothing of the pipeline imported.

- :mod:`~pipeline.params.core`: the base of every section (unknown keys and booleans-as-numbers
  refused), :class:`ConfigError`, reading YAML with duplicate keys refused, :func:`load` of a
  stage's view of the file, and the checks across sections.
- one module per section: :mod:`~pipeline.params.data` (``prepare``, ``tokenize``),
  :mod:`~pipeline.params.model` (``model``, ``base``, ``train``), :mod:`~pipeline.params.shards`,
  :mod:`~pipeline.params.mixtures` (``mixtures``, ``validation``),
  :mod:`~pipeline.params.evaluation` (``eval``), :mod:`~pipeline.params.report`.
- :mod:`~pipeline.params.config`: the whole file (:class:`Config`), which the check stage
  validates before any other stage runs.

A stage declares the sections it reads as a small :class:`~pipeline.params.core.StageParams`
model of its own and loads only those: its code (and so its DVC dependencies) then holds only the
schemas of what it reads, and an edit to another section's schema does not make it stale.
This package's ``__init__`` stays empty of code: every stage imports it.
"""
