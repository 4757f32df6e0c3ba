from pathlib import Path

from moderator.commands.schemas import render, schemas

SCHEMAS = Path(__file__).resolve().parents[3] / "deploy" / "schemas"


def test_committed_schemas_match_the_code() -> None:
    for name, schema in schemas().items():
        committed = (SCHEMAS / name).read_text(encoding="utf-8")
        assert committed == render(schema), (
            f"deploy/schemas/{name} is stale: "
            "run `python -m moderator.commands.schemas deploy/schemas`"
        )
