"""Ingest: files -> validated records -> the knowledge graph; every row loaded or reported.

Entry points: :func:`ingest.pipeline.ingest` / :class:`ingest.pipeline.Ingestor`
with :class:`ingest.pipeline.Source` objects (or :func:`ingest.sources.discover`
for paths), :func:`ingest.load.load_tables` for in-memory catalogue tables, and
``kgrec ingest`` (:mod:`kgrec.cli_ingest`). See docs/ingest.md.
"""
