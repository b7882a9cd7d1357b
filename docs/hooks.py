"""MkDocs hook: the reference pages that are generated from the code, so they are never written twice.

- reference/config.md from the pydantic config classes (every key, its type, default and description);
- reference/cli.md from the command line's own --help texts;
- reference/server-api.md from the server's OpenAPI schema;
- benchmarks.md: BENCHMARKS.md from the repository's root, as it is;
- tour.md: the README's tour (one text, tested where it lives: tests/test_readme.py runs its commands).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
    for name, content in (("reference/config.md", config_reference()), ("reference/cli.md", cli_reference()),
                          ("reference/server-api.md", server_reference()),
                          ("benchmarks.md", (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")),
                          ("tour.md", tour())):
        files.append(File.generated(config, name, content=content))
    return files


def tour() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## A five-minute tour")
    end = readme.index("\n## ", start + 5)
    return "# Tour\n\nFrom a fresh clone, `make demo` installs and trains the demo; then:\n\n" + \
        readme[start:end].split("\n", 1)[1].strip() + "\n"


# ---------------------------------------------------------------- command line


def cli_reference() -> str:
    import os

    import typer
    from typer.testing import CliRunner

    from tunelab.cli import app

    os.environ.setdefault("COLUMNS", "100")
    runner = CliRunner()
    lines = ["# Command line", "", "Generated from `tunelab --help` and each command's `--help`.", ""]

    def walk(command, names: list[str]) -> None:
        if names:
            out = runner.invoke(app, [*names, "--help"], env={"NO_COLOR": "1", "TERM": "dumb"}, prog_name="tunelab").output
            lines.extend([f"## `tunelab {' '.join(names)}`", "", "```text", out.strip(), "```", ""])
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, names + [name])

    walk(typer.main.get_command(app), [])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- configuration


def config_reference() -> str:
    from pydantic import BaseModel

    from tunelab.config import Config

    lines = ["# Configuration reference", "",
             "Generated from the config classes in `tunelab/config.py`: every key a run's YAML may hold, with its "
             "type, default and meaning. `tunelab config schema` prints the same as JSON schema; "
             "`tunelab config show CFG` prints a config with every default filled in. Any key can be set on the "
             "command line as `dotted.key=value`.", ""]

    def section(model: type[BaseModel], path: str, depth: int) -> None:
        lines.extend([f"{'#' * depth} `{path}`" if path else f"{'#' * depth} Top level", "",
                      (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else "", "",
                      "| key | type | default | meaning |", "| --- | --- | --- | --- |"])
        nested = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            optional = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(optional) == 1 and type(None) in typing.get_args(annotation):  # `Section | None`: optional section
                annotation = optional[0]
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((annotation, f"{path}.{name}" if path else name))
                kind = "section" if annotation is field.annotation else "section or null"
                lines.append(f"| `{name}` | {kind} | {_cell(_default(field)) if kind != 'section' else ''} | "
                             f"{_cell(field.description)} (see below) |")
                continue
            lines.append(f"| `{name}` | {_cell(_type(annotation))} | {_cell(_default(field))} | {_cell(field.description)} |")
        lines.append("")
        for model_, path_ in nested:
            section(model_, path_, min(depth + 1, 4))

    section(Config, "", 2)
    return "\n".join(lines) + "\n"


def _type(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type(a) for a in typing.get_args(annotation) if a is not type(None)) + \
            (" or null" if type(None) in typing.get_args(annotation) else "")
    if origin in (list, tuple, dict):
        args = ", ".join(_type(a) for a in typing.get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{args}]" if args else origin.__name__
    name = getattr(annotation, "__name__", str(annotation))
    return "path" if name in ("Path", "PosixPath") else name


def _default(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif isinstance(value, list) and value and hasattr(value[0], "model_dump"):
        value = [v.model_dump(mode="json", exclude_none=True) for v in value]
    return f"`{json.dumps(value, default=str)}`"


def _cell(text) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- server API


def server_reference() -> str:
    from tunelab.serve.app import create_app

    from tunelab.apps.finance.config import FinanceConfig
    from tunelab.apps.recommend.config import RecommendConfig
    from tunelab.apps.support.config import SupportConfig

    # an application's routes are part of the same server (tunelab serve --app): each app's, with its defaults
    schema = create_app(loaded={}, app_config=FinanceConfig(sentiment="sentiment.yaml", watchlist="watchlist.csv")).openapi()
    for config, prefixes in ((SupportConfig(faq="faq.csv", questions="questions.csv"), ("/v1/support", "/support")),
                             (RecommendConfig(interactions="i.csv", items="items.csv"), ("/v1/recommend", "/v1/items"))):
        other = create_app(loaded={}, app_config=config).openapi()
        schema["paths"].update({p: m for p, m in other["paths"].items() if p.startswith(prefixes)})
        schema.setdefault("components", {}).setdefault("schemas", {}).update(other.get("components", {}).get("schemas", {}))
    lines = ["# Server API", "",
             f"Generated from the OpenAPI schema of `tunelab serve` (version {schema['info']['version']}). A running "
             "server serves the same schema at `/openapi.json` and an interactive page at `/docs`.", ""]
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            lines += [f"## `{method.upper()} {path}`", "", (op.get("description") or op.get("summary") or "").strip(), ""]
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                lines += ["Request body:", "", *_schema_table(_resolve(body, schema), schema), ""]
            codes = ", ".join(f"`{code}`" for code in op.get("responses", {}))
            lines += [f"Responses: {codes}", ""]
    lines += ["## Schemas", ""]
    for name, definition in schema.get("components", {}).get("schemas", {}).items():
        if name.startswith(("HTTPValidationError", "ValidationError")):
            continue
        lines += [f"### {name}", "", (definition.get("description") or "").strip(), "",
                  *_schema_table(definition, schema), ""]
    return "\n".join(lines) + "\n"


def _resolve(node: dict, schema: dict) -> dict:
    ref = node.get("$ref")
    if ref:
        return schema["components"]["schemas"][ref.split("/")[-1]]
    return node


def _schema_type(node: dict) -> str:
    if "$ref" in node:
        return node["$ref"].split("/")[-1]
    if "anyOf" in node:
        return " or ".join(_schema_type(n) for n in node["anyOf"])
    if node.get("type") == "array":
        return f"list[{_schema_type(node.get('items', {}))}]"
    return node.get("type", "any")


def _schema_table(node: dict, schema: dict) -> list[str]:
    props = node.get("properties", {})
    if not props:
        return []
    required = set(node.get("required", []))
    rows = ["| field | type | required | meaning |", "| --- | --- | --- | --- |"]
    for name, prop in props.items():
        rows.append(f"| `{name}` | {_cell(_schema_type(prop))} | {'yes' if name in required else ''} | "
                    f"{_cell(prop.get('description'))} |")
    return rows
