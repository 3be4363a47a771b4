"""`fedblend site`: the agent an institution runs beside its data (outbound HTTPS only).

    fedblend site --bundle cleveland.bundle --data ../shared/data     # a heart-disease hospital
    fedblend site --bundle acme.bundle --data /srv/acme/data          # user CSV/Parquet data

The site's name comes from its certificate. The job comes from the server; the site loads *its
own* part of the data: for a built-in dataset, the split the simulator would give the site of that
name (``--data`` is the data directory); for ``dataset = "csv" | "parquet"``, the file the job
lists for this site (``--data`` is that file, or a directory holding it).

The data version is a hash of the data manifest (each file's name, size and sha256); when it
changes the agent reloads its data and tells the server (continuous federation).
"""

from __future__ import annotations

import hashlib
import logging
import tomllib
from pathlib import Path
from typing import Any

import typer

from fedblend.cli.common import console, err_console
from fedblend.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# where each built-in dataset's files live under the data directory (for the data manifest)
_BUILTIN_FILES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "femnist": "femnist_leaf_sample",
                  "shakespeare": "shakespeare_leaf_sample"}


def manifest_version(paths: list[Path]) -> str:
    """Hash of the data manifest: each file's relative name, size and sha256 (in sorted order)."""
    files: list[tuple[str, Path]] = []
    for p in paths:
        if p.is_dir():
            files += [(str(f.relative_to(p.parent)), f) for f in sorted(p.rglob("*")) if f.is_file()]
        elif p.exists():
            files.append((p.name, p))
    h = hashlib.sha256()
    for name, f in sorted(files):
        fh = hashlib.sha256()
        with open(f, "rb") as fd:
            for block in iter(lambda: fd.read(1 << 20), b""):
                fh.update(block)
        h.update(f"{name}\0{f.stat().st_size}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()[:16]


class _Manifest:
    """Re-hashes files only when their size or mtime changed."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._stamp: Any = None
        self._version = ""

    def _stamp_now(self) -> Any:
        out = []
        for p in self.paths:
            for f in (sorted(p.rglob("*")) if p.is_dir() else [p]):
                try:
                    st = f.stat()
                    out.append((str(f), st.st_size, st.st_mtime_ns))
                except FileNotFoundError:
                    out.append((str(f), None, None))
        return out

    def version(self) -> str:
        stamp = self._stamp_now()
        if stamp != self._stamp:
            self._stamp, self._version = stamp, manifest_version(self.paths)
        return self._version


def _user_file(job: Any, name: str, data: Path | None) -> Path:
    files = job.data.files or {}
    if name not in files:
        raise ConfigError(f"the job lists data files for sites {sorted(files)}, not for {name!r}; "
                          f"add {name} = \"FILE\" to [data].files")
    listed = Path(files[name])
    if data is None:
        cands = [listed]
    elif data.is_file():
        cands = [data]
    else:
        cands = [data / listed, data / listed.name]
    for c in cands:
        if c.is_file():
            return c
    raise DataError(f"site {name!r}: data file not found (looked for {[str(c) for c in cands]}); "
                    "pass --data FILE or --data DIR holding the file the job names for this site")


def make_loader(data: Path | None) -> Any:
    """``load_site(job_toml, name) -> LocalSite`` for the agent, reading local data under ``data``."""
    manifests: dict[str, _Manifest] = {}

    def load_site(job_toml: str, name: str) -> Any:
        from fedblend.data import load_tabular_sites
        from fedblend.engine.site import SiteRunner
        from fedblend.jobs import parse_job
        from fedblend.net.agent import LocalSite
        from fedblend.net.config import parse_deploy
        from fedblend.net.wire import Schema
        from fedblend.runner import build_dataset, build_task

        try:
            raw = tomllib.loads(job_toml)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"the server sent a job that is not valid TOML: {exc}") from None
        job = parse_job(raw, source="the job sent by the server")
        spec = parse_deploy(job.deploy, source="the job sent by the server")
        d = job.data
        if d.dataset in ("csv", "parquet"):
            path = _user_file(job, name, data)
            fd = load_tabular_sites({name: path}, label_column=str(d.label_column), feature_columns=d.feature_columns,
                                    test_fraction=d.test_fraction, val_fraction=d.val_fraction or 0.0, seed=job.seed,
                                    classes=spec.classes)
            paths = [path]
        else:
            from fedblend.data import resolve_data_dir

            root = resolve_data_dir(data if data is not None else d.dir)
            fd = build_dataset(job, root)
            if name not in fd.sites:
                raise ConfigError(f"site {name!r} is not a site of dataset {d.dataset!r} as this job partitions it "
                                  f"(its sites: {fd.site_ids[:10]}{'...' if len(fd.site_ids) > 10 else ''}); "
                                  "the certificate's name must be one of them")
            if d.dataset == "heart_disease":
                from fedblend.data.heart import HEART_SITES

                paths = [root / HEART_SITES[name]] if name in HEART_SITES else [root / "heart_disease"]
            else:
                paths = [root / _BUILTIN_FILES.get(d.dataset, "")]
        site = fd.sites[name]
        task = build_task(job, fd)
        # one tiny training step now, so the first round is not slowed by torch's first-use costs
        # (every train call seeds itself: this changes no later result)
        task.train(task.init_weights(job.seed), site.train.subset(slice(0, min(8, len(site.train)))),  # type: ignore[arg-type]
                   {"local_steps": 1, "batch_size": 8}, 0)
        runner = SiteRunner(site, task, num_classes=fd.num_classes, feature_names=fd.feature_names, min_cell=d.min_cell)
        key = "|".join(str(p) for p in paths)
        man = manifests.setdefault(key, _Manifest(paths))
        schema = Schema(input_shape=list(fd.input_shape), num_classes=fd.num_classes, kind=fd.kind,  # type: ignore[arg-type]
                        feature_names=list(fd.feature_names))
        return LocalSite(runner=runner, schema=schema, data_version=man.version(),
                         num_rows=len(site.train) + len(site.val) + len(site.test), current_version=man.version)

    return load_site


def register(app: typer.Typer) -> None:
    @app.command()
    def site(
        bundle: Path = typer.Option(..., "--bundle", help="this site's bundle from `fedblend ca add-site`"),
        data: Path | None = typer.Option(None, "--data", help="data directory (built-in datasets) or this site's data file/directory"),
        server: str | None = typer.Option(None, "--server", help="server URL (default: the bundle's)"),
        give_up_s: float = typer.Option(600.0, "--give-up-s", help="stop after the server has been unreachable this long"),
        threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default)"),
        delay_train_s: float = typer.Option(0.0, "--delay-train-s", hidden=True, help="fault injection: sleep before training"),
    ) -> None:
        """Join a federation as one site: train on local data when the server asks."""
        from fedblend.net.agent import EXIT_DONE, EXIT_REJECTED, SiteAgent
        from fedblend.net.identity import load_bundle

        b = load_bundle(bundle)
        if b.role != "site":
            raise ConfigError(f"{bundle} is an {b.role} bundle; a site needs a site bundle (`fedblend ca add-site NAME`)")
        if threads:
            import torch

            torch.set_num_threads(threads)
        agent = SiteAgent(b, make_loader(data), server_url=server, give_up_s=give_up_s, delay_train_s=delay_train_s)
        console.print(f"site [bold]{b.site}[/] connecting to {server or b.server_url}")
        code = agent.run()
        if code == EXIT_DONE:
            console.print(f"site {b.site}: {agent.message or 'done'}")
        elif code == EXIT_REJECTED:
            err_console.print(f"[bold red]certificate rejected:[/] {agent.message}")
        else:
            err_console.print(f"[bold red]error:[/] {agent.message}")
        raise typer.Exit(code)
