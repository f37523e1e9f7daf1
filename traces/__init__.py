"""The trace format: schema (schema.py), writer (writer.py), reader (reader.py),
validation (check.py), compaction and merging (compact.py), and a SYNTHETIC trace
generator for tests (synthetic.py). See traces/README.md."""
