"""`parley --help` starts fast: it imports neither the settings (pydantic models are built at import), nor
asyncio, nor rich's help renderer. Asserted on imports, not on time, so a busy machine cannot fail it."""

from __future__ import annotations

import json
import subprocess
import sys

SLOW_AT_IMPORT = ("bot.config", "pydantic", "pydantic_settings", "limits", "asyncio", "rich", "dspy")
# The file converters load when a file is read, never at start-up (pypdf alone is ~100 ms).
CONVERTERS = ("pypdf", "docx", "pptx", "openpyxl", "PIL", "bs4", "markdownify", "charset_normalizer")

CODE = """
import json, sys
from bot.cli import main
sys.argv = ["parley", "--help"]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}), file=sys.stderr)
"""


def test_help_imports_nothing_heavy() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CODE % (SLOW_AT_IMPORT + CONVERTERS,)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}
    assert "Usage: parley" in proc.stdout and "chat" in proc.stdout


def test_settings_do_not_import_the_rate_limiter_or_the_scheduler() -> None:
    code = "import sys, bot.config; print(sorted(m for m in ('limits', 'apscheduler') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"
