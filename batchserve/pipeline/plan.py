"""Planning, on the client, before anything is written: resolve the model and prove it loads,
list the inputs, read every footer, decide which files feed the model and what the output schema
is (the model and the majority of files decide, never the file that sorts first), fingerprint.

Example::

    >>> plan = plan_run(resolve_score_config({"model": "sample_data/model",
    ...     "input": "sample_data/transactions", "output": ""}, env={}))  # doctest: +SKIP
    >>> plan.rows  # doctest: +SKIP
    100000
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from batchserve import drift, io, manifest, model, registry, scoring, selection
from batchserve import reference as ref_mod
from batchserve.config import ScoreConfig
from batchserve.errors import BatchserveError, InputError, SchemaError, closest, located

__all__ = ["RunPlan", "resolve_model", "inspect_model", "plan_run", "read_inputs", "fingerprint", "load_reference",
           "absolute_paths"]


@dataclasses.dataclass(frozen=True)
class ChallengerPlan:
    """The challenger, resolved and checked against every file before any scoring."""

    model_uri: str
    model_url: str
    model_version: str | None
    info: model.ModelInfo
    features: scoring.FeaturePlan
    keep: tuple[str, ...] | None
    alias_event: registry.Event | None = None

    def same_features_as(self, other: scoring.FeaturePlan) -> bool:
        """Whether the challenger can run on the champion's feature arrays as they are (no second conversion)."""
        return self.features.bindings == other.bindings


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run will do, decided and checked on the client before any scoring."""

    model_uri: str
    model_url: str
    model_version: str | None
    info: model.ModelInfo
    features: scoring.FeaturePlan
    input_root: str
    partitions: tuple[io.Partition, ...]
    footers: tuple[io.Footer, ...]
    reference: ref_mod.Reference | None = None
    policy: drift.DriftPolicy = dataclasses.field(default_factory=drift.DriftPolicy)
    #: Files found bad while planning under --on-error skip.
    failures: tuple[manifest.FailureEntry, ...] = ()
    #: The audit event that last moved the alias the model was named by (``fraud@production``).
    alias_event: registry.Event | None = None
    #: A second model scored beside this one in the same pass (shadow scoring).
    challenger: ChallengerPlan | None = None

    @property
    def rows(self) -> int:
        return sum(f.num_rows for f in self.footers)

    @property
    def largest_file(self) -> int:
        """Rows of the largest input file: no batch is larger (small files are read in one batch)."""
        return max((f.num_rows for f in self.footers), default=0)


def resolve_model(uri: str, version: int | None, storage: Mapping[str, Any]) -> registry.Resolved:
    """A model file, or a version of a model repository: plain (the highest complete version),
    ``@N``, ``@alias``, or ``--model-version N`` (see :mod:`batchserve.registry`)."""
    return registry.resolve(uri, storage, version=version)


def inspect_model(
    uri: str, *, model_version: int | None = None, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The model's signature and provenance, as ``batchserve inspect`` shows it."""
    resolved = resolve_model(uri, model_version, storage_options or {})
    url, version, data = resolved.url, resolved.version, resolved.data
    with located(url):
        info = model.describe(data)
    try:
        names, problem = info.feature_names, None
    except BatchserveError as exc:  # inspect is where one looks at a broken model: show it, say what is wrong
        names, problem = None, str(exc)
    event = resolved.alias_event.as_dict() if resolved.alias_event else None
    return {"uri": uri, "resolved_uri": url, "version": version, **info.as_dict(),
            "feature_names": names, "feature_names_error": problem, "alias_event": event}


def absolute_paths(cfg: ScoreConfig) -> ScoreConfig:
    """Local paths resolved on the client, before any task leaves it: a worker of an existing
    cluster would otherwise resolve ``out/`` against its own working directory."""
    storage = cfg.storage
    return dataclasses.replace(
        cfg,
        model=io.absolute_url(cfg.model, storage),
        input=io.absolute_url(cfg.input, storage),
        output=io.absolute_url(cfg.output, storage),
        reference=io.absolute_url(cfg.reference, storage) if cfg.reference else cfg.reference,
        challenger=io.absolute_url(cfg.challenger, storage) if cfg.challenger else cfg.challenger,
        challenger_output=io.absolute_url(cfg.challenger_output, storage) if cfg.challenger_output else None,
    )


def plan_run(cfg: ScoreConfig) -> RunPlan:
    """Resolve the model and inputs and check every footer; raises before any scoring.

    Which files are good is decided by the model (features present and numeric, ``--keep``
    columns present) and by the majority of files for the column types of the output, never
    by whichever file sorts first; under ``--on-error skip`` only the odd files are skipped.
    """
    storage = cfg.storage
    resolved = resolve_model(cfg.model, cfg.model_version, storage)
    url, version, data = resolved.url, resolved.version, resolved.data
    with located(url):
        info = model.describe(data)
    root, pairs, failures = read_inputs(cfg)
    skip = cfg.on_error == "skip"
    out_names = [cfg.prefix + o.name for o in info.outputs]
    names = _majority_names(pairs)
    with located(url):
        fplan = scoring.plan_features(info, cfg.features, names, override=cfg.features_override)
    fplan = dataclasses.replace(fplan, nan=cfg.nan)
    challenger = _plan_challenger(cfg, names) if cfg.challenger else None
    fitting = _passing(pairs, lambda p, f: _check_file(cfg, fplan, out_names, p, f), skip, failures)
    if challenger is not None:
        fitting = _passing(fitting, lambda p, f: _check_challenger(cfg, challenger, p, f), skip, failures)
    if not fitting:
        raise SchemaError(f"no input file fits the model; first: {failures[0].error}", path=cfg.input)
    expected = _majority_types(cfg, fitting)
    good = _passing(fitting, lambda p, f: _check_majority(cfg, expected, len(fitting), p, f), skip, failures)
    with located(url):  # after the schemas: a column error needs no onnxruntime (~0.05 s with the session)
        model.check_runnable(info, data)
    policy = drift.parse_policy(cfg.drift_metric, cfg.drift_threshold)
    reference = load_reference(cfg.reference, storage, fplan.features) if cfg.reference else None
    return RunPlan(
        cfg.model, url, version, info, fplan, root, tuple(p for p, _ in good), tuple(f for _, f in good),
        reference, policy, tuple(failures), resolved.alias_event, challenger,
    )


def _plan_challenger(cfg: ScoreConfig, names: list[str]) -> ChallengerPlan:
    """Resolve and check the challenger like the champion; its features are its own (a new model may
    read extra columns), so it needs feature_names metadata or one input per column."""
    assert cfg.challenger is not None
    resolved = resolve_model(cfg.challenger, None, cfg.storage)
    with located(resolved.url, "challenger: "):
        info = model.describe(resolved.data)
        model.check_runnable(info, resolved.data)
        fplan = scoring.plan_features(info, None, names)
    return ChallengerPlan(cfg.challenger, resolved.url, resolved.version, info, dataclasses.replace(fplan, nan=cfg.nan),
                          cfg.challenger_keep if cfg.challenger_keep is not None else cfg.keep, resolved.alias_event)


def _check_challenger(cfg: ScoreConfig, ch: ChallengerPlan, part: io.Partition, footer: io.Footer) -> None:
    """Every file must feed the challenger too, and carry the columns kept beside its predictions."""
    with located(part.url, f"challenger {ch.model_uri}: "):
        scoring.check_schema(ch.features, footer.schema, part.url)
    _check_kept(ch.keep, [cfg.prefix + o.name for o in ch.info.outputs], part, footer, "--challenger-keep",
                "challenger prediction column would overwrite a kept input column",
                "pass --prefix or --challenger-keep")


def _passing(
    pairs: list[tuple[io.Partition, io.Footer]], check: Callable[[io.Partition, io.Footer], None], skip: bool,
    failures: list[manifest.FailureEntry],
) -> list[tuple[io.Partition, io.Footer]]:
    """The files that pass ``check``: under --on-error skip the others are recorded, else the first raises.

    Every check here reads only the file's schema (the path is only named in its error), so a schema
    that passed once passes again: 2,000 small files of one schema are checked once, not 2,000 times.
    Schemas are known by identity (:func:`io.read_footers` hands equal ones out as one object):
    hashing a pyarrow schema walks its fields in Python, 18 us for 38 columns, per file per check.
    """
    kept = []
    passed: set[int] = set()
    for part, footer in pairs:
        if id(footer.schema) in passed:
            kept.append((part, footer))
            continue
        try:
            check(part, footer)
        except BatchserveError as exc:
            if not skip:
                raise
            failures.append(manifest.FailureEntry(part.url, part.relpath, str(exc)))
            continue
        passed.add(id(footer.schema))
        kept.append((part, footer))
    return kept


def _majority_names(pairs: list[tuple[io.Partition, io.Footer]]) -> list[str]:
    """The column names most files have (feature planning by column needs one list)."""
    votes = collections.Counter(tuple(f.schema.names) for _, f in pairs)
    return list(votes.most_common(1)[0][0])


#: A column's vote when a file does not have it (only counted when every column is kept).
_ABSENT = "absent"


def _type_vote(schema: pa.Schema, col: str) -> str | None:
    """A file's vote for a column's type; an all-null column (e.g. an empty pandas file) fits any."""
    i = schema.get_field_index(col)
    if i < 0:
        return _ABSENT
    t = schema.field(i).type
    return None if pa.types.is_null(t) else str(t)


def _majority_types(cfg: ScoreConfig, pairs: list[tuple[io.Partition, io.Footer]]) -> dict[str, str]:
    """Per output column, the type most files have; a tie is an error no rule settles."""
    # Files mostly share one schema: each distinct schema (object: see _passing) votes with its count
    # (2,000 small files of 38 columns were 152,000 lookups, ~0.4 s of planning).
    by_id = {id(f.schema): f.schema for _, f in pairs}
    counts = collections.Counter(id(f.schema) for _, f in pairs)
    if cfg.keep is not None:
        cols = list(cfg.keep)
    else:
        cols = list(dict.fromkeys(n for schema in by_id.values() for n in schema.names))
    expected: dict[str, str] = {}
    for col in cols:
        votes: collections.Counter[str] = collections.Counter()
        for key, n in counts.items():
            if (v := _type_vote(by_id[key], col)) is not None:
                votes[v] += n
        if not votes:
            continue
        ranked = votes.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            sides = "; ".join(
                f"{t} in {n} file(s), e.g. {next(p.relpath for p, f in pairs if _type_vote(f.schema, col) == t)}"
                for t, n in ranked[:2]
            )
            raise SchemaError(
                f"input files disagree on this column and no majority decides ({sides}); make the files agree, "
                "or leave the column out with --keep",
                path=cfg.input, column=col,
            )
        expected[col] = ranked[0][0]
    return expected


def _check_majority(
    cfg: ScoreConfig, expected: Mapping[str, str], n_files: int, part: io.Partition, footer: io.Footer
) -> None:
    """One output schema per run: a file's kept columns must have the types most files have."""
    for col, want in expected.items():
        have = _type_vote(footer.schema, col)
        if have is None or have == want:
            continue
        if have == _ABSENT:
            msg = "schema differs from most input files: a column they have is missing here"
        elif want == _ABSENT:
            msg = "schema differs from most input files: an extra column is here; pass --keep to choose the columns"
        else:
            raise SchemaError(f"schema differs from most input files ({n_files} checked)", path=part.url,
                              column=col, expected=want, found=have)
        raise SchemaError(msg, path=part.url, column=col)


def read_inputs(cfg: ScoreConfig) -> tuple[str, list[tuple[io.Partition, io.Footer]], list[manifest.FailureEntry]]:
    """List the input and read every footer (in parallel, retrying transient errors).

    Under ``--on-error skip`` an unreadable file is recorded as a failure instead of stopping the run.
    """
    root, parts = io.list_partitions(cfg.input, cfg.storage)
    if cfg.filter:  # before any footer is read: one day of a year costs one day of reads
        chosen = selection.select([p.relpath for p in parts], selection.parse_filters(cfg.filter))
        listed = len(parts)
        parts = [p for p, keep in zip(parts, chosen, strict=True) if keep]
        if not parts:
            raise InputError(f"no input file matches --filter {' and '.join(cfg.filter)} "
                             f"({listed} file(s) listed)", path=cfg.input)
    fixed = selection.path_keys(cfg.output) if cfg.output else {}
    if fixed:  # keys the output's own path fixes are not nested again (scored/date=X/date=X/)
        parts = [dataclasses.replace(p, relpath=selection.without_fixed_keys(p.relpath, fixed)) for p in parts]
    skip = cfg.on_error == "skip"
    results = io.read_footers([p.url for p in parts], cfg.storage, retries=cfg.retries, keep_errors=skip)
    pairs: list[tuple[io.Partition, io.Footer]] = []
    failures: list[manifest.FailureEntry] = []
    for part, result in zip(parts, results, strict=True):
        if isinstance(result, BatchserveError):
            failures.append(manifest.FailureEntry(part.url, part.relpath, str(result)))
        else:
            pairs.append((part, result))
    if not pairs:
        raise InputError("every input file is unreadable; see the manifest's failures", path=cfg.input)
    return root, pairs, failures


def _check_file(
    cfg: ScoreConfig, fplan: scoring.FeaturePlan, out_names: list[str], part: io.Partition, footer: io.Footer
) -> None:
    """Whether this file can feed the model: features present and numeric, kept columns present."""
    dup = [n for n, k in collections.Counter(footer.schema.names).items() if k > 1]
    if dup:
        raise SchemaError("this column name appears more than once in the file; rename one", path=part.url,
                          column=dup[0])
    scoring.check_schema(fplan, footer.schema, part.url)
    _check_kept(cfg.keep, out_names, part, footer, "--keep", "prediction column would overwrite an input column",
                "pass --prefix (e.g. --prefix pred_) or drop the column with --keep")


def _check_kept(
    keep: tuple[str, ...] | None, out_names: list[str], part: io.Partition, footer: io.Footer, flag: str,
    clash: str, hint: str,
) -> None:
    """The columns kept beside a model's predictions exist, and no prediction would overwrite one."""
    kept = footer.schema.names if keep is None else list(keep)
    for col in kept:
        if footer.schema.get_field_index(col) < 0:
            raise SchemaError(f"column named in {flag} is missing" + closest(col, footer.schema.names, quote=True),
                              path=part.url, column=col)
    for col in out_names:
        if col in kept:
            raise SchemaError(clash, path=part.url, column=col, hint=hint)


def fingerprint(cfg: ScoreConfig, plan: RunPlan) -> str:
    """Digest of everything that decides output values: same fingerprint, same bytes of meaning."""
    basis = {
        "model": plan.info.sha256, "features": [dataclasses.asdict(b) for b in plan.features.bindings],
        "keep": list(cfg.keep) if cfg.keep is not None else None, "prefix": cfg.prefix,
    }
    return model.sha256_hex(json.dumps(basis, sort_keys=True).encode())


def load_reference(uri: str, storage: Mapping[str, Any], features: tuple[str, ...]) -> ref_mod.Reference:
    """Read and check a reference up front: a bad one must fail before anything is scored."""
    if not io.exists(uri, storage):
        raise InputError("reference not found; pass a profile from `batchserve profile` or a _manifest.json", path=uri)
    data = io.read_bytes(uri, storage)
    ref = manifest.load_reference(data.decode("utf-8", errors="replace"), uri, model.sha256_hex(data))
    ref_mod.check_reference_covers(ref, list(features))
    return ref
