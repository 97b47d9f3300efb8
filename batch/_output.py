"""Where a job's results land: a folder of Parquet shards on any filesystem pyarrow opens (a local path, or a URI
such as file://, s3://, gs://, abfs://, hdfs://). Only the driver touches it: actors return their rows to the
driver, which writes the shards, so the workers of a cluster need no access to the output.

Each shard is written under a hidden temporary name and then moved to its final name, so readers of the folder and a
resumed job only ever see whole shards (locally a rename; on an object store the move copies a complete object, which
appears at once). Names starting with "." or "_" are skipped by pyarrow and Ray readers.
"""

from __future__ import annotations

import os
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def open_output(output: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path inside it) of a local folder or a URI pyarrow's filesystems accept."""
    if "://" in output:
        return pafs.FileSystem.from_uri(output)
    return pafs.LocalFileSystem(), os.path.abspath(output)


class ResultStore:
    """The output folder: ids already written (the resume), and new shards of about `shard_rows` rows each."""

    def __init__(self, output: str, prefix: str, shard_rows: int):
        self.fs, self.root = open_output(output)
        self.fs.create_dir(self.root, recursive=True)
        self.prefix, self.shard_rows = prefix, shard_rows
        self.parts: list[pa.Table] = []
        self.rows = 0
        self.shards: list[str] = []  # written by this store
        self.documents = self.errors = self.tokens = 0  # totals of what this store was given (the summary)

    def _names(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    def done_ids(self) -> tuple[set[str], list[str]]:
        """Ids already written, and the unreadable shards moved aside as `_incomplete.*` (their documents run
        again); a killed job's hidden temporary shard is deleted."""
        done, aside = set(), []
        for name in self._names():
            path = f"{self.root}/{name}"
            if name.startswith(".") and name.endswith(".parquet.tmp"):
                self.fs.delete_file(path)
            elif name.endswith(".parquet") and not name.startswith(("_", ".")):
                try:
                    done.update(pq.read_table(path, columns=["id"], filesystem=self.fs)["id"].to_pylist())
                except (pa.ArrowInvalid, OSError):
                    self.fs.move(path, f"{self.root}/_incomplete.{name}")
                    aside.append(name)
        return done, aside

    def add(self, table: pa.Table) -> None:
        self.parts.append(table)
        self.rows += len(table)
        self.documents += len(table)
        self.errors += len(table) - table["error"].null_count
        self.tokens += int(pc.sum(table["tokens"]).as_py() or 0)
        if self.rows >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        name = f"{self.prefix}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = f"{self.root}/.{name}.tmp"
        pq.write_table(pa.concat_tables(self.parts), tmp, filesystem=self.fs)
        self.fs.move(tmp, f"{self.root}/{name}")
        self.shards.append(name)
        self.parts, self.rows = [], 0
