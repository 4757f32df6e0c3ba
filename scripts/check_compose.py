"""Validate compose files against the Compose Specification's JSON Schema.

The schema comes from the compose-spec/compose-go Go module (the loader Docker Compose itself
uses), fetched through the Go module proxy by scripts/lint-deploy.sh; no Docker engine is needed.

usage: check_compose.py COMPOSE_SPEC.json FILE.yml...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import yaml


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    schema = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    failed = False
    for name in argv[1:]:
        document = yaml.safe_load(Path(name).read_text(encoding="utf-8"))
        errors = sorted(validator_class(schema).iter_errors(document), key=lambda e: e.path)
        for error in errors:
            path = ".".join(str(p) for p in error.absolute_path) or "(top)"
            print(f"  FAIL {name}: {path}: {error.message}", file=sys.stderr)
        failed |= bool(errors)
        if not errors:
            print(
                f"  ok   {name}: valid Compose file ({len(document.get('services', {}))} services)"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
