"""Ingest: files -> validated records -> the knowledge graph; every row loaded or reported.

Entry points: :func:`kgrec.ingest.pipeline.ingest` / :class:`kgrec.ingest.pipeline.Ingestor`
with :class:`kgrec.ingest.pipeline.Source` objects (or :func:`kgrec.ingest.sources.discover`
for paths), :func:`kgrec.ingest.load.load_tables` for in-memory catalogue tables, and
``kgrec ingest`` (:mod:`kgrec.cli_ingest`). See docs/ingest.md.
"""
