"""Rewrite the settings table of docs/operations.md from ``service.settings.Settings`` (``make settings-table``).

The table sits between two marker comments; everything else in the document is left as it is. Run it after
adding or changing a setting: tests/test_settings.py fails while the document and the code disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from service.settings import TABLE_BEGIN, TABLE_END, Settings  # noqa: E402

DOC = ROOT / "docs" / "operations.md"


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    head, begin, rest = text.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        print(f"error: {DOC} has no {TABLE_BEGIN} ... {TABLE_END} section", file=sys.stderr)
        return 1
    DOC.write_text(f"{head}{TABLE_BEGIN}\n{Settings.table()}{TABLE_END}{tail}", encoding="utf-8")
    print(f"{DOC.relative_to(ROOT)}: settings table rewritten ({len(Settings.parser()._actions) - 1} settings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
