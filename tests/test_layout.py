"""The import rules of the README's Layout section: nothing imports upward, and the two products
share code only through ``recsys_common``."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package path -> module prefixes it must never import
FORBIDDEN = {
    "recsys_common": ("sml_torchrec", "catn"),
    "sml_torchrec/modules": ("sml_torchrec.data", "sml_torchrec.distributed",
                             "sml_torchrec.retrain", "recsys_common", "catn"),
    "sml_torchrec/data": ("sml_torchrec.modules", "sml_torchrec.distributed",
                          "sml_torchrec.retrain", "catn"),
    "sml_torchrec/distributed": ("sml_torchrec.data", "sml_torchrec.retrain", "catn"),
    "sml_torchrec": ("catn",),
    "catn/modules": ("catn.data", "catn.baselines", "catn.train", "sml_torchrec"),
    "catn": ("sml_torchrec",),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, package
    bad = [
        f"{f.relative_to(ROOT)} imports {m}"
        for f in files
        for m in sorted(_imports(f))
        if any(m == p or m.startswith(p + ".") for p in FORBIDDEN[package])
    ]
    assert not bad, bad


def test_the_rules_can_fail(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from sml_torchrec.data import batching\nimport catn.train\n")
    assert _imports(f) == {"sml_torchrec.data", "catn.train"}
