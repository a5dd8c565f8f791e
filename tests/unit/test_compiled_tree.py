"""loadtests.compiled_tree: which modules the compiled copy of the tree compiles."""

from pathlib import Path

from loadtests.compiled_tree import LEFT_AS_SOURCE, PACKAGES, modules

ROOT = Path(__file__).resolve().parents[2]


def test_the_request_path_is_compiled_and_the_entry_point_and_models_are_not():
    files = modules(ROOT)
    assert {"cluster/gateway/stream/relay.py", "cluster/gateway/admission/entry.py",
            "cluster/routing/router.py", "cluster/tenancy/local_store.py"} <= set(files)
    assert not LEFT_AS_SOURCE & set(files)
    assert not [f for f in files if f.endswith("__init__.py") or not f.startswith(PACKAGES)]


def test_what_is_left_as_source_still_exists():
    """A rename would otherwise compile the entry point (python -m needs its source)."""
    assert all((ROOT / f).is_file() for f in LEFT_AS_SOURCE)
