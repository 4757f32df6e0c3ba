"""`serve` never imports the export wing: torch and transformers stay out of the service."""

import subprocess
import sys


def test_service_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys, moderator.service.app, moderator.cli, moderator.commands.score; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
