"""A batch job: documents in (JSONL or Parquet), per-document results out (Parquet shards with the document id),
on Ray Data (a local instance or a cluster) or serially in this process.

Resume: results already in the output folder are read first and their ids skipped; a shard that does not read back
is moved aside as `_incomplete.*` and its documents are run again (see _output). Faults: a document that fails is an
error row (see _scorer); an actor that dies, alone or with its node, is restarted by Ray and its batch retried
(`max_restarts`, `max_task_retries`: Ray's own mechanisms, configured here, not re-implemented); the summary says
which documents were retried and which worker, on which node and SIMD tier, scored the rest (see _workers).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._model import BatchError, ModelSpec, inspect
from ._output import ResultStore
from ._scorer import OVERFLOW, DocumentScorer, ScoreOptions, result_schema, result_table
from ._tokenizer import TokenizerSpec, build_spec
from ._workers import Ledger, ReportingScorer, WorkerReport, ledger_actor

ACTOR_RESTARTS = 3  # an actor that dies is replaced up to this many times, and its unfinished batch retried
ROUNDS = 3  # passes over the documents whose batches Ray gave up on (see _run_ray)
SAMPLE_DOCUMENTS = 16  # documents the ONNX tokenizer is checked on against the Hugging Face one
SHARD_ROWS = 64  # result rows per Parquet shard


@dataclass
class BatchOptions:
    input: str  # a .jsonl / .json (one object per line) or .parquet file, or a folder of Parquet files
    output: str  # a folder of Parquet shards (created; results already there are skipped)
    model: str  # an ONNX file or an onnxruntime-genai folder
    tokenizer: str | None = None  # recipe name or Hugging Face tokenizer folder (default: the genai folder's own)
    id_column: str = "id"
    text_column: str = "text"
    max_tokens: int | None = None  # default: the recipe's / genai config's context length
    overflow: str = "error"  # documents over max_tokens: error row, truncate, or score in windows
    actors: int = 1
    cpus_per_actor: int = 1
    batch_size: int = 4  # documents per task
    address: str | None = None  # a Ray cluster ("auto" or host:port); None: a local Ray started here
    actor_resources: dict | None = None  # custom Ray resources each actor needs (places actors on such nodes)
    runtime_env: dict | None = None  # Ray's runtime_env for the job (env_vars, py_modules, pip, working_dir)
    shard_rows: int = SHARD_ROWS  # result rows per Parquet shard: what a killed driver can lose at most
    serial: bool = False  # no Ray: the same scorer in this process (the reference, and for small jobs)
    limit: int | None = None  # the first N input documents only


@dataclass
class BatchSummary:
    documents: int  # scored in this run
    skipped: int  # already in the output folder
    errors: int  # error rows written in this run
    tokens: int  # tokens of the documents scored in this run
    seconds: float
    shards: list[str] = field(default_factory=list)  # written in this run
    tokenizer: str = ""  # which tokenizer the workers used, and why
    set_aside: list[str] = field(default_factory=list)  # unreadable shards moved aside (re-run)
    workers: list[WorkerReport] = field(default_factory=list)  # who scored this run's documents, and on which tier
    retried: list[str] = field(default_factory=list)  # ids whose batch ran again after its actor or node was lost

    @property
    def documents_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


RECIPES = {"smollm2": 8192, "qwen2.5-coder-0.5b": 32768, "minilm": 512}  # name -> context length


def _text_or_error(value) -> tuple[str | None, str | None]:
    """(text, None) for a usable text, (None, why) otherwise."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"text is not valid UTF-8 ({e.reason} at byte {e.start})"
    if value is None:
        return None, "no text (null or missing)"
    if not isinstance(value, str):
        return None, f"text is {type(value).__name__}, not a string"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return None, f"text is not valid Unicode ({e.reason} at character {e.start})"
    return value, None


def _read_jsonl(p: Path, id_column: str, text_column: str) -> list[tuple]:
    rows = []
    with open(p, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:  # the line is this document's error row
                rows.append((f"line-{n}", None, f"line {n} is not valid UTF-8 JSON ({e})"))
                continue
            if not isinstance(obj, dict) or id_column not in obj:
                raise BatchError(f"{p}: line {n} has no {id_column!r} field; choose the id with --id-column")
            rows.append((obj[id_column], *_text_or_error(obj.get(text_column))))
    return rows


def read_input(path: str, id_column: str, text_column: str, limit: int | None = None) -> pa.Table:
    """[id (string), text (string or null), input_error (why the text is unusable, or null)], or a BatchError."""
    p = Path(path)
    if not p.exists():
        raise BatchError(f"{p}: no such input")
    if p.suffix in (".jsonl", ".json", ".ndjson"):
        rows = _read_jsonl(p, id_column, text_column)
    else:
        try:
            table = pq.read_table(p)
        except (pa.ArrowInvalid, OSError) as e:
            raise BatchError(f"{p}: not readable as Parquet ({e})") from e
        for col in (id_column, text_column):
            if col not in table.column_names:
                raise BatchError(
                    f"{p}: no column {col!r} (columns: {', '.join(table.column_names)}); "
                    "choose with --id-column / --text-column"
                )
        rows = [(i, *_text_or_error(t)) for i, t in zip(table[id_column].to_pylist(), table[text_column].to_pylist())]
    ids = [str(r[0]) for r in rows]
    if len(set(ids)) != len(ids):
        raise BatchError(f"{p}: the id column {id_column!r} has duplicates (ids name the results and the resume)")
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "text": pa.array([r[1] for r in rows], pa.string()),
            "input_error": pa.array([r[2] for r in rows], pa.string()),
        }
    )
    return table.slice(0, limit) if limit is not None else table


def _tokenizer_spec(options: BatchOptions, model: ModelSpec, samples: list) -> TokenizerSpec:
    name = options.tokenizer
    if name is None:
        folder = Path(options.model)
        if folder.is_dir() and (folder / "tokenizer.json").is_file():
            name = str(folder)
        else:
            raise BatchError(
                "--tokenizer is needed: a recipe name (smollm2, qwen2.5-coder-0.5b, minilm) or a Hugging "
                "Face tokenizer folder"
            )
    if name == "minilm":
        from transformers import AutoTokenizer

        from ..models import minilm

        return build_spec(AutoTokenizer.from_pretrained(minilm.model_dir()), minilm.model_dir(), samples)
    if name in RECIPES:
        from ..models.export import decoder

        recipe = decoder(name)
        return build_spec(recipe.tokenizer(), recipe.hf_dir(), samples)
    if not (Path(name) / "tokenizer.json").is_file():
        raise BatchError(
            f"--tokenizer {name}: neither a recipe ({', '.join(RECIPES)}) nor a folder with tokenizer.json"
        )
    from transformers import AutoTokenizer

    return build_spec(AutoTokenizer.from_pretrained(name), name, samples, add_special_tokens=model.task == "embed")


def run_batch(options: BatchOptions, scorer: type = DocumentScorer) -> BatchSummary:
    """Runs the job; `scorer` is the per-worker class (DocumentScorer, or a subclass of it)."""
    t0 = time.perf_counter()
    if options.overflow not in OVERFLOW:
        raise BatchError(f"--overflow must be one of {', '.join(OVERFLOW)}, got {options.overflow!r}")
    if min(options.actors, options.cpus_per_actor, options.batch_size, options.shard_rows) < 1:
        raise BatchError("--actors, --cpus-per-actor, --batch-size and --shard-rows must be >= 1")
    model = inspect(options.model)
    max_tokens = options.max_tokens or model.max_tokens or RECIPES.get(options.tokenizer or "")
    if not max_tokens:
        raise BatchError("--max-tokens is needed (the model's context length is not known here)")
    table = read_input(options.input, options.id_column, options.text_column, options.limit)
    try:
        store = ResultStore(options.output, "serial" if options.serial else "ray", options.shard_rows)
    except (OSError, pa.ArrowInvalid, ValueError) as e:
        raise BatchError(f"{options.output}: cannot open the output folder ({type(e).__name__}: {e})") from e
    done, aside = store.done_ids()
    todo = table.filter(pc.invert(pc.is_in(table["id"], value_set=pa.array(sorted(done), pa.string()))))
    samples = [t for t in table["text"].slice(0, SAMPLE_DOCUMENTS).to_pylist() if t is not None]
    tok = _tokenizer_spec(options, model, samples)
    score = ScoreOptions(max_tokens, options.overflow, options.cpus_per_actor if options.serial else None)
    workers, retried = [], []
    if len(todo):
        run = _run_serial if options.serial else _run_ray
        workers, retried = run(options, todo, store, (scorer, (model, tok, score)))
    return BatchSummary(
        store.documents,
        len(table) - len(todo),
        store.errors,
        store.tokens,
        time.perf_counter() - t0,
        store.shards,
        tok.note,
        aside,
        workers,
        retried,
    )


def _blocks(options: BatchOptions, todo: pa.Table) -> list[pa.Table]:
    return [todo.slice(s, options.batch_size) for s in range(0, len(todo), options.batch_size)]


def _run_serial(options: BatchOptions, todo: pa.Table, store: ResultStore, work: tuple) -> tuple[list, list]:
    ledger = Ledger()
    worker = ReportingScorer(*work, ledger)
    for part in _blocks(options, todo):
        store.add(worker({c: part[c].to_numpy(zero_copy_only=False) for c in part.column_names}))
    store.flush()
    return ledger.report()


def _run_ray(options: BatchOptions, todo: pa.Table, store: ResultStore, work: tuple) -> tuple[list, list]:
    """One block per batch (no repartition task), a fixed pool of actors spread over the nodes; the results stream
    back to this process, which writes the shards (no write tasks competing with the actors for CPUs: on a 2-CPU
    machine with 2 actors they would never be scheduled). A node that joins during the job takes actors the pool
    could not place before.

    Losses, two layers: an actor whose process dies is restarted and its batch retried by Ray (max_restarts /
    max_task_retries). A node that dies can outlast those retries (its actors are "unavailable", not dead, until the
    cluster declares the node dead, and the retries are spent meanwhile), so a batch Ray gives up on is dropped from
    that round rather than failing the job, and its documents run again in a new round, up to ROUNDS rounds; a
    document lost in every round gets an error row saying so."""
    import ray

    if not ray.is_initialized():
        _connect(options)
    ledger = ledger_actor()
    context = ray.data.DataContext.get_current()
    errored_blocks, context.max_errored_blocks = context.max_errored_blocks, -1  # lost batches: the next round
    rerun: set[str] = set()
    try:
        for _ in range(ROUNDS):
            scored: list = []  # id chunks of this round's results; one filter per round (the corpus can be large)
            for table in _ray_round(options, todo, work, ledger):
                store.add(table)
                scored.extend(table["id"].chunks)
            if scored:
                todo = todo.filter(pc.invert(pc.is_in(todo["id"], value_set=pa.concat_arrays(scored))))
            if not len(todo):
                break
            rerun.update(todo["id"].to_pylist())
        else:
            store.add(_lost_rows(todo, work[1][0].task))
    finally:
        context.max_errored_blocks = errored_blocks
    store.flush()
    workers, retried = ray.get(ledger.report.remote())
    ray.kill(ledger)
    return workers, sorted(rerun.union(retried))


def _connect(options: BatchOptions) -> None:
    import ray

    try:
        ray.init(  # "local": a new instance here, never a cluster another process left in /tmp/ray
            address=options.address or "local",
            runtime_env=options.runtime_env,
            include_dashboard=False,
            log_to_driver=False,
        )
    except ConnectionError as e:
        why = e.__cause__ or e
        hint = ""
        if isinstance(why, ray.exceptions.AuthenticationError):
            hint = (
                " - the cluster uses token authentication: run with RAY_AUTH_MODE=token and the cluster's token in "
                "RAY_AUTH_TOKEN (or the file ~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH)"
            )
        raise BatchError(f"cannot connect to the Ray cluster at {options.address}: {why}{hint}") from e


def _ray_round(options: BatchOptions, todo: pa.Table, work: tuple, ledger):
    """The result tables of one pass of the actor pool over `todo`."""
    import ray

    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for these actor options yet (the pinned version; its default is to
        # restart without limit, which would loop on a document that kills its actor every time).
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        warnings.filterwarnings("ignore", message="The argument ``concurrency`` is deprecated")
        results = ray.data.from_arrow(_blocks(options, todo)).map_batches(
            ReportingScorer,
            fn_constructor_args=(*work, ledger),
            batch_size=options.batch_size,
            batch_format="numpy",
            concurrency=options.actors,
            num_cpus=options.cpus_per_actor,
            resources=options.actor_resources,
            scheduling_strategy="SPREAD",
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
        )
    yield from results.iter_batches(batch_format="pyarrow", batch_size=None)


def _lost_rows(todo: pa.Table, task: str) -> pa.Table:
    why = f"not scored: its batch was lost in all {ROUNDS} rounds (actors or nodes died); run the command again"
    row = {f.name: None for f in result_schema(task)} | {
        "tokens": 0,
        "scored": 0,
        "windows": 0,
        "error": why,
        "seconds": 0.0,
    }
    return result_table(task, todo["id"].to_pylist(), [row] * len(todo))
