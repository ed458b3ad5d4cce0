"""Where results go without explicit settings: the cwd on a laptop, never Ray's session
folder (a ``ray job submit`` driver's working directory), ``$RAYLAB_HOME`` when set; and
``raylab ui`` / ``raylab report`` read the store the jobs wrote (and the ``mlruns.db``
older versions wrote)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raylab import storage
from raylab.cli import reading_stores
from raylab.data.store import cache_root
from raylab.tracking import tracking_uri


@pytest.fixture
def plain_env(tmp_path, monkeypatch):
    """No explicit stores, a private HOME and a private Ray temp root (``$RAY_TMPDIR``)."""
    for key in ("MLFLOW_TRACKING_URI", "RAYLAB_CACHE_DIR", "RAYLAB_HOME", "TMPDIR", storage.RAY_JOB_DRIVER_ENV):
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "rtmp"))
    monkeypatch.setattr(storage, "_announced", set())
    return tmp_path


def working_dir_of_a_submitted_job(temp_root: Path) -> Path:
    """What Ray 2.60 gives a ``ray job submit --working-dir .`` driver as its cwd."""
    cwd = (
        temp_root
        / "session_2026-01-02_03-04-05_123456_789"
        / "runtime_resources"
        / "working_dir_files"
        / "_ray_pkg_0123abcd"
    )
    cwd.mkdir(parents=True)
    return cwd


def test_laptop_default_is_unchanged(plain_env, monkeypatch, capsys):
    laptop = plain_env / "project"
    laptop.mkdir()
    monkeypatch.chdir(laptop)
    assert not storage.in_ray_session()
    assert tracking_uri() == f"sqlite:///{laptop / 'mlflow.db'}"
    assert cache_root() == laptop.resolve() / ".raylab"
    assert capsys.readouterr().err == ""  # nothing to announce
    assert not (plain_env / "home" / ".raylab").exists()


def test_cwd_in_ray_temp_session_goes_to_the_user_directory(plain_env, monkeypatch, capsys):
    monkeypatch.chdir(working_dir_of_a_submitted_job(plain_env / "rtmp" / "ray"))
    persistent = (plain_env / "home" / ".raylab").resolve()
    assert storage.in_ray_session()
    assert tracking_uri() == f"sqlite:///{persistent / 'mlflow.db'}"
    assert cache_root() == persistent / "cache"  # Tune state is cache_root()/ray_results
    assert persistent.is_dir() and (persistent.stat().st_mode & 0o777) == 0o700
    err = capsys.readouterr().err
    assert err.count("raylab: results go to") == 1 and str(persistent) in err  # said once per process
    # explicit settings still win inside a job
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////shared/x.db")
    monkeypatch.setenv("RAYLAB_CACHE_DIR", str(plain_env / "explicit"))
    assert tracking_uri() == "sqlite:////shared/x.db"
    assert cache_root() == (plain_env / "explicit").resolve()


def test_other_signs_of_a_submitted_job(plain_env, monkeypatch):
    persistent = (plain_env / "home" / ".raylab").resolve()
    # a node started with `ray start --temp-dir` somewhere this process does not know of
    monkeypatch.chdir(working_dir_of_a_submitted_job(plain_env / "custom-ray-temp"))
    assert storage.in_ray_session()
    assert storage.default_root().path == persistent
    # a submitted job's driver (Ray's job supervisor sets RAY_JOB_CONFIG_JSON_ENV_VAR)
    ordinary = plain_env / "ordinary"
    ordinary.mkdir()
    monkeypatch.chdir(ordinary)
    assert not storage.in_ray_session()
    monkeypatch.setenv(storage.RAY_JOB_DRIVER_ENV, '{"runtime_env": {}, "metadata": {}}')
    assert storage.in_ray_session()
    assert cache_root() == persistent / "cache"


def test_raylab_home_is_the_root_everywhere(plain_env, monkeypatch, capsys):
    shared = plain_env / "shared" / "raylab"
    monkeypatch.setenv("RAYLAB_HOME", str(shared))
    for cwd in (working_dir_of_a_submitted_job(plain_env / "rtmp" / "ray"), plain_env):
        monkeypatch.chdir(cwd)
        assert tracking_uri() == f"sqlite:///{shared.resolve() / 'mlflow.db'}"
        assert cache_root() == shared.resolve() / "cache"
    assert "$RAYLAB_HOME" in capsys.readouterr().err


def test_cli_reads_the_store_submitted_jobs_wrote(plain_env, monkeypatch, capsys):
    import mlflow

    # the job, in Ray's session folder, writes ~/.raylab/mlflow.db
    # (a client, not mlflow.set_tracking_uri, which would leak into later tests)
    monkeypatch.chdir(working_dir_of_a_submitted_job(plain_env / "rtmp" / "ray"))
    mlflow.MlflowClient(tracking_uri()).create_experiment("raylab/storage_probe")
    # later, `raylab ui` / `raylab report` from the project folder find it
    project = plain_env / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    stores = reading_stores()
    assert stores == [f"sqlite:///{(plain_env / 'home' / '.raylab').resolve() / 'mlflow.db'}"]
    assert mlflow.MlflowClient(stores[0]).get_experiment_by_name("raylab/storage_probe") is not None
    assert not (project / "mlflow.db").exists()  # reading created no store here
    # with a local store as well, the local one comes first and the other is named
    (project / "mlflow.db").touch()
    capsys.readouterr()
    assert reading_stores() == [f"sqlite:///{project / 'mlflow.db'}", stores[0]]
    assert "runs are also in" in capsys.readouterr().err


def test_store_is_mlflows_default_so_a_plain_mlflow_ui_finds_it(plain_env, monkeypatch):
    from mlflow.store.tracking import DEFAULT_TRACKING_URI

    project = plain_env / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    # `mlflow ui` / `mlflow server` without --backend-store-uri open this relative URI
    assert DEFAULT_TRACKING_URI == f"sqlite:///{storage.DB_NAME}"
    assert tracking_uri() == f"sqlite:///{(project / storage.DB_NAME).resolve()}"


def test_runs_in_an_older_mlruns_db_stay_readable(plain_env, monkeypatch, capsys):
    import mlflow

    project = plain_env / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    legacy = project / "mlruns.db"
    mlflow.MlflowClient(f"sqlite:///{legacy}").create_experiment("raylab/legacy_probe")  # an older version's store
    # alone, it is what `raylab ui` opens and `raylab report` searches
    assert reading_stores() == [f"sqlite:///{legacy}"]
    assert not (project / "mlflow.db").exists()  # reading created no new store
    # new jobs write mlflow.db; readers then take it first and name the older store
    assert tracking_uri() == f"sqlite:///{project / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri()).create_experiment("raylab/new_probe")
    capsys.readouterr()
    stores = reading_stores()
    assert stores == [f"sqlite:///{project / 'mlflow.db'}", f"sqlite:///{legacy}"]
    assert f"runs are also in {legacy}" in capsys.readouterr().err
    assert mlflow.MlflowClient(stores[1]).get_experiment_by_name("raylab/legacy_probe") is not None
    # a legacy store under ~/.raylab (older submitted jobs) is read too, after the local ones
    persistent = (plain_env / "home" / ".raylab").resolve()
    persistent.mkdir()
    (persistent / "mlruns.db").touch()
    assert reading_stores()[2:] == [f"sqlite:///{persistent / 'mlruns.db'}"]
