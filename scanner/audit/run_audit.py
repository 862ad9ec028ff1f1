"""`run_audit(...)`: plan the models, skip those already done, run the rest, write the summary files."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanse_base.errors import ConfigError
from cleanse_base.files import check_writable_folder, real_folder, refuse_overlap
from scanner.audit.index_page import write_index
from scanner.audit.jobs import REPORTS_FOLDER, WORK_FOLDER, AuditJob, cached_fingerprint, plan_job
from scanner.audit.manifest import Manifest, entries_from_paths, read_manifest
from scanner.audit.ray_runner import RayBackend
from scanner.audit.runner import Backend, ProcessBackend, default_threads, default_workers, run_jobs
from scanner.audit.store import STORE_NAME, AuditRow, AuditStore
from scanner.audit.summary import write_summary
from scanner.progress import Progress


@dataclass(frozen=True)
class AuditOptions:
    out: Path
    data: Path | None = None  # default clean data
    settings: dict[str, Any] = field(default_factory=dict)  # scan settings for every model (command line)
    workers: int = 0  # 0: one per GPU, else one per CPU core
    threads: int = 0  # torch threads per worker; 0: the cores shared out among workers
    ray: str = ""  # a Ray address, "auto" or "local"; empty: local worker processes
    retry_errors: bool = False  # rescan models whose earlier scan ended in an error
    errors_win: bool = False  # exit 2 rather than 1 when some models are infected and others failed
    quiet: bool = False

    def validate(self) -> None:
        """ConfigError for counts no backend can run with (a negative --workers would never start a model)."""
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"--{name} must be a whole number >= 1 (or 0 for the default), not {value!r}")


@dataclass(frozen=True)
class AuditResult:
    rows: list[AuditRow]  # every model of this audit, scanned now or in an earlier run
    exit_code: int
    scanned: int  # models scanned by this run


def plan(manifest: Manifest, options: AuditOptions) -> list[AuditJob]:
    data = options.data or manifest.data
    fingerprint = cached_fingerprint()
    jobs = {}
    for entry in manifest.models:
        job = plan_job(entry, data, manifest.settings, options.settings, options.out, fingerprint)
        jobs[job.key] = job  # a model listed twice with the same settings is scanned once
    return list(jobs.values())


def make_backend(options: AuditOptions, models: int) -> Backend:
    device = options.settings.get("device", "auto")
    if options.ray:
        return RayBackend(options.ray, options.threads or 1, gpu=device.startswith("cuda"))
    workers = options.workers or default_workers(device, models)
    return ProcessBackend(workers, options.threads or default_threads(workers), device)


def prepare_out_folder(out: Path, inputs: list[Path | None], manifest: Manifest) -> None:
    """The audit folder, its reports/ and work/ as real folders (not planted symlinks), none of them over or
    inside a model, a folder of models, the data or the manifest; leftover private copies of a killed run
    removed."""
    check_writable_folder(out)
    inputs = [
        *inputs,
        *(entry.path for entry in manifest.models if not (entry.from_folder and entry.path.is_symlink())),
        *(entry.data for entry in manifest.models),
    ]
    refuse_overlap(inputs, [], [out])
    real_folder(out)
    real_folder(out / REPORTS_FOLDER)
    work = real_folder(out / WORK_FOLDER)
    for leftover in work.glob("scan-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def run_audit(paths: list[Path], manifest_path: Path | None, options: AuditOptions) -> AuditResult:
    options.validate()
    if manifest_path:
        manifest = read_manifest(manifest_path)
        manifest = Manifest(manifest.data, manifest.settings, manifest.models + entries_from_paths(paths))
    else:
        manifest = Manifest(None, {}, entries_from_paths(paths))
    if not manifest.models:
        raise ConfigError("no models to audit: give model files or folders, or --manifest")
    prepare_out_folder(options.out, [manifest_path, options.data or manifest.data, *paths], manifest)
    jobs = plan(manifest, options)
    with AuditStore(options.out / STORE_NAME) as store:
        todo = [job for job in jobs if not store.is_finished(job.key, options.retry_errors)]
        progress = Progress(len(jobs), "models", options.quiet, done=len(jobs) - len(todo))
        recorded = {}
        if todo:
            backend = make_backend(options, len(todo))
            try:
                recorded = run_jobs(todo, backend, store, progress)
            finally:
                backend.close()
                progress.close()
        rows = [store.get(recorded.get(job.key, job.key)) for job in jobs]
    code = write_summary(rows, options.out, options.errors_win)
    write_index(rows, options.out)
    return AuditResult(rows, code, len(todo))
