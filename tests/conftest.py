"""Shared test settings: quiet TensorFlow, a fresh artifacts folder, the real-data switch."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One BLAS thread per test process, and in the processes the tests start: pytest-xdist already runs a
# process per core, and OpenBLAS's threads spin while they wait, so two processes' threads on two
# cores made a Ledoit-Wolf fit (every OOD detector) up to 20 times slower (tests/test_ood.py: 42 s, 28 s).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
threadpool_limits(int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")

# The JAX processes the tests start compile with XLA's backend optimisations off: they check what the code does
# with XLA (its persistent cache, a JAX-trained model served on TensorFlow, the GPU benchmark's figures), not how
# fast the compiled code runs. test_compilation.py's JAX fold took 62 s of CPU at XLA's default level, 39 s at 0;
# ``python -m benchmarks gpu --tiny`` 46 s and 27 s.
FAST_XLA_FLAGS = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

from engine import settings  # noqa: E402
from engine.training import compiled_models  # noqa: E402
from tests.synthetic import make_dataset  # noqa: E402

SHARED = settings.shared_dir()
HAS_SHARED_DATA = (SHARED / "data" / "covid19-radiography-paper").is_dir()
HAS_SHARED_WEIGHTS = (SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5").is_file()
requires_shared = pytest.mark.skipif(
    not (HAS_SHARED_DATA and HAS_SHARED_WEIGHTS),
    reason=f"real data and weights not found under {SHARED} (set CXR_SHARED to the shared folder)",
)


# The longest files first, alternating those that run in the test process with those that start processes of
# their own (workers, servers, Chromium, probes), so that two of the latter run at once less often: which files
# run side by side moved single files' times between runs (test_compilation.py: 29 s to 71 s; CONTRIBUTING.md,
# "Test suite timings"). pytest-xdist hands a file to whichever worker is free
# (``--dist loadfile --no-loadscope-reorder``), so the last files to start are short ones. Its own default order,
# most tests first, started the one-test browser and load files last, and one worker ran them alone at the end.
# test_robustness_jobs.py (3 s of tests) comes first of the files that read the shared tiny explorer study, so
# that it builds the study (about 20 s) and test_app_robustness.py finds it built.
SLOWEST_FIRST = (
    "test_export.py",
    "test_jobs.py",
    "test_export_int8_real_model_onnx.py",
    "test_benchmarks_processes.py",
    "test_robustness_jobs.py",
    "test_app_robustness.py",
    "test_faults.py",
    "test_export_real_models.py",
    "test_browser.py",
    "test_training.py",
    "test_distributed.py",
    "test_inference_cli.py",
    "test_export_int8_real_model_litert.py",
    "test_compilation.py",
    "test_benchmarks.py",
    "test_load.py",
    "test_backbones.py",
    "test_benchmarks_app.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the files of :data:`SLOWEST_FIRST` first, in its order; the others keep theirs."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


IN_CI = os.environ.get("CI", "").strip().lower() in settings.TRUE_WORDS
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skip (on the xdist controller too, which replays the workers' reports)."""
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (``CI=true``) a skipped test is a failure: a broken install must not pass as green.

    The README promises every test runs with the dev requirements, Chromium and the shared data;
    locally a missing piece still skips, with its reason.
    """
    if IN_CI and _skipped and not hasattr(session.config, "workerinput"):
        names = "\n  ".join(sorted(set(_skipped)))
        session.config.get_terminal_writer().line(
            f"\nCI: {len(set(_skipped))} test(s) skipped, which CI counts as failures:\n  {names}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module", autouse=True)
def _module_garbage_collectable() -> Iterator[None]:
    """What a test file leaves behind is collectable again once it ends (see ``_older_objects_frozen``)."""
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _older_objects_frozen() -> None:
    """Keep the objects that outlive the previous test (TensorFlow, Keras, JAX, Streamlit: over 500,000) out of the
    garbage collections this test triggers.

    Streamlit collects every generation after each script run (``runner.postScriptGC``) and, with Keras imported,
    calls ``keras.backend.clear_session()``, which collects again: over a test process's heap each collection took
    0.14 to 0.28 s, so every ``AppTest.run()`` paid up to 0.5 s for them. A collection first, so that only objects
    still reachable are frozen; objects this test makes are collected as usual, and the file's are at its end.
    """
    gc.collect()
    gc.freeze()


LEAK_CHECKED = ("KERAS_BACKEND", "CXR_READ_ONLY", "CXR_ARTIFACTS", "XLA_PYTHON_CLIENT_PREALLOCATE")


@pytest.fixture(autouse=True)
def environment_left_as_found() -> None:
    """A test that runs an entry point in-process must not leave its settings to the next tests.

    A benchmark once set ``KERAS_BACKEND=jax`` here, and every later subprocess of that pytest worker
    ran on JAX: the fault is reported at the test that leaked it, not at the ones that inherited it.
    """
    before = {name: os.environ.get(name) for name in LEAK_CHECKED}
    yield
    after = {name: os.environ.get(name) for name in LEAK_CHECKED}
    leaked = {name: (before[name], after[name]) for name in LEAK_CHECKED if before[name] != after[name]}
    for name, (value, _) in leaked.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    assert not leaked, f"the test changed the environment (before, after): {leaked}"


@pytest.fixture(autouse=True)
def no_kept_model() -> None:
    """Each test starts without a compiled model kept from another test's folds."""
    compiled_models.forget()


@contextlib.contextmanager
def eager_functions() -> Iterator[None]:
    """TensorFlow's functions run eagerly inside the block.

    Tracing a train or predict step costs seconds, more than a tiny epoch of a few batches:
    test_training.py took 184 s compiled and 70 s eager on the 2-core machine. In-process training
    of tiny models uses it (the ``eager_tensorflow`` modules, test_export.py's tiny study); the tests
    that run a worker process (test_jobs.py, test_faults.py, test_browser.py, test_distributed.py),
    the benchmarks, the exports and the parity tests on real images run compiled, as users do.
    """
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)


@pytest.fixture(scope="module")
def eager_tensorflow() -> Iterator[None]:
    """:func:`eager_functions` for one whole test module (``pytest.mark.usefixtures`` on the module)."""
    with eager_functions():
        yield


@pytest.fixture
def artifacts_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh artifacts folder, also set as CXR_ARTIFACTS for code and subprocesses."""
    root = tmp_path / "artifacts"
    root.mkdir()
    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """Three class folders (COVID, NORMAL, Viral Pneumonia) of six 40x40 PNGs each."""
    return make_dataset(tmp_path / "tiny")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three class folders of eight 40x40 PNGs, once per module: the benchmarks' ``--tiny`` data."""
    return make_dataset(tmp_path_factory.mktemp("bench") / "tiny", n_per_class=8, size=40)
