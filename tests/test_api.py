"""The package's public API: every exported name resolves, lazily (no torch for `import
safegene`), and importing a submodule of the same name does not replace the function."""

import subprocess
import sys

import safegene


def test_every_export_resolves():
    for name in safegene.__all__:
        assert getattr(safegene, name) is not None, name
    assert callable(safegene.select) and callable(safegene.evaluate)


def test_submodules_do_not_shadow_the_functions():
    import safegene.calibrate
    import safegene.evaluate.judges
    import safegene.select
    from safegene import calibrate, evaluate, select

    assert (select.__name__, calibrate.__name__, evaluate.__name__) == (
        "select",
        "calibrate",
        "evaluate",
    )
    assert safegene.select is select and safegene.evaluate is evaluate
    from safegene.select import choose  # the module is still there

    assert callable(choose)


def test_import_and_version_do_not_load_torch():
    code = (
        "import sys, safegene\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(safegene.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    version = subprocess.run(
        [sys.executable, "-m", "safegene", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.strip() == f"safegene {done.stdout.strip()}"
