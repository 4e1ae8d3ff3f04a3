"""What the safety tests compare: a directory tree, file by file, by content."""

import hashlib
from pathlib import Path


def file_tree(root: Path, dirs: bool = False) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (and ``"<dir>"`` for every directory
    when ``dirs``): two trees are byte-identical when their dicts are equal."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
        else "<dir>"
        for p in sorted(Path(root).rglob("*"))
        if dirs or p.is_file()
    }
