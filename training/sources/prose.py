"""English prose from ``pydoc_data/topics.py`` (ships with every interpreter) without code or
grammar: a second natural "language" next to the embedded Python source, for continual pre-training.
"""

from __future__ import annotations

import ast
import os
import platform
import re
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

from chinchax.errors import DataError
from training.sources.embedded import stdlib_root

PROSE_FORMAT = 1  # bump when the paragraph filter or the grouping below changes
PROSE_DOCUMENT_CHARS = 2_000  # paragraphs of one topic are grouped into documents this long
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# Four words in a row, the last three lower-case: what running English has and headings,
# tables, signatures and keyword lists lack.
_RUNNING_TEXT = re.compile(r"[A-Za-z]+(?: [a-z]+){3}")


def prose_topics_path() -> Path:
    return stdlib_root() / "pydoc_data" / "topics.py"


def _is_code(paragraph: str) -> bool:
    """Grammar rules, doctest sessions and anything Python can compile are not prose."""
    text = textwrap.dedent(paragraph).strip()
    if "::=" in text or text.startswith((">>>", "...")):
        return True
    with warnings.catch_warnings():  # odd escapes in examples warn while compiling
        warnings.simplefilter("ignore")
        try:
            compile(text, "<paragraph>", "exec")
        except (SyntaxError, ValueError):
            return False
    return True


def prose_paragraphs(text: str) -> List[str]:
    paragraphs = (textwrap.dedent(p).strip() for p in _PARAGRAPH_BREAK.split(text))
    return [p for p in paragraphs if p and _RUNNING_TEXT.search(p) and not _is_code(p)]


def _literal_assignment(path: Path, name: str) -> object:
    """Read as data, never executed."""
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def _topics() -> dict:
    path = prose_topics_path()
    if not path.is_file():
        raise DataError(
            f"this Python has no {path.name} under {path.parent} for the prose corpus",
            hint="use a full Python install (with pydoc_data), or data.source=text with your own prose",
        )
    topics = _literal_assignment(path, "topics")
    if not isinstance(topics, dict):
        raise DataError(f"{path} holds no 'topics' dictionary",
                        hint="use a standard CPython install, or data.source=text with your own prose")
    return topics


def prose_documents() -> List[str]:
    """Grouped into documents of about :data:`PROSE_DOCUMENT_CHARS`, so a by-document split holds a
    predictable share."""
    topics = _topics()
    result: List[str] = []
    for name in sorted(topics):
        group: List[str] = []
        for paragraph in prose_paragraphs(str(topics[name])):
            group.append(paragraph)
            if sum(len(p) for p in group) >= PROSE_DOCUMENT_CHARS:
                result.append("\n\n".join(group))
                group = []
        if group:
            result.append("\n\n".join(group))
    return result


def documents(cfg: Any, cache_dir: Path) -> Iterator[bytes]:
    for document in prose_documents():
        yield document.encode("utf-8")


def cache_parts(cfg: Any) -> Tuple[str, Dict[str, object]]:
    topics = prose_topics_path()
    try:
        stat = os.stat(topics)
        size_and_time = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        size_and_time = [-1, -1]  # missing: building the corpus will say so
    return "prose", {
        "python": f"{sys.implementation.name}-{platform.python_version()}",
        "prose": [PROSE_FORMAT, PROSE_DOCUMENT_CHARS, str(topics), *size_and_time],
    }


def description(cfg: Any) -> str:
    return f"English prose of the Python {platform.python_version()} language reference"
