"""Corpus input and output: readers that never lose a record, and atomic sharded writers."""

from proxkit.io.readers import (
    Document,
    Fields,
    Reject,
    content_id,
    list_files,
    read_file,
    read_inputs,
    record_format,
)
from proxkit.io.writers import OUTPUT_FORMATS, RecordWriter, format_of_file

__all__ = [
    "OUTPUT_FORMATS",
    "Document",
    "Fields",
    "RecordWriter",
    "Reject",
    "content_id",
    "format_of_file",
    "list_files",
    "read_file",
    "read_inputs",
    "record_format",
]
