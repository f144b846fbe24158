import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIRROR = Path(os.environ.get("EDITUNLEARN_TEST_MIRROR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
    """The local dataset mirror (../shared/data beside the project, or EDITUNLEARN_TEST_MIRROR);
    without one, the dataset files are downloaded once into a mirror of the same layout. Never a
    skip: the data, workflow and SLURM tests are most of what `make test` proves."""
    from editunlearn.data import SOURCES, DataError, fetch

    if all((MIRROR / src.mirror_path).is_file() for src in SOURCES.values()):
        return MIRROR
    downloaded = tmp_path_factory.mktemp("mirror")
    try:
        for name, src in SOURCES.items():
            fetch(name, downloaded / src.mirror_path, None)
    except DataError as exc:
        pytest.fail(f"no dataset mirror at {MIRROR} (set EDITUNLEARN_TEST_MIRROR to a copy of "
                    f"../shared/data) and the download failed:\n{exc}")
    return downloaded


@pytest.fixture(scope="module")
def one_thread():
    """Tests on tiny matrices run on one torch thread: extra intra-op threads only add
    synchronisation, which on a busy 2-core machine made them ~15x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(model, tokenizer) of a tiny random Llama; tests must not modify it (use fresh_tiny)."""
    from editunlearn.testing import build_tiny_llama

    return build_tiny_llama(seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from editunlearn.testing import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def snakemake_exe():
    exe = Path(sys.executable).with_name("snakemake")
    if not exe.exists():
        pytest.fail(f"snakemake not found next to {sys.executable}: run `make test` (it installs it)")
    return str(exe)
