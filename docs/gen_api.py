"""Write docs/api.md from distkeras' docstrings and signatures.

    python docs/gen_api.py            # rewrite docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is out of date

Only what users import is documented: a module's ``__all__`` when it has one, else its
public classes and functions defined in that module. Methods inherited from pyspark or Keras
base classes are left to those projects' documentation.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "api.md"

#: (module, why a user opens it, names to show or None for all public ones), reading order
MODULES = [
    ("distkeras.trainers", "the trainers: pick an algorithm, `train(df)`", None),
    ("distkeras.history", "what happened during training: summaries, DataFrame, plots", None),
    ("distkeras.transformers", "preparing DataFrame columns", None),
    ("distkeras.predictors", "predicting on a DataFrame on the executors", None),
    ("distkeras.evaluators", "scoring predictions in Spark", None),
    ("distkeras.ml", "a trainer as a Spark ML Estimator", None),
    ("distkeras.spark", "Spark sessions and where the driver is reached", None),
    ("distkeras.devices", "the GPU each Spark task runs on (docs/cluster.md)",
     ["Placement", "place", "model_devices", "visible_gpus"]),
    ("distkeras.parameter_server", "the parameter server's settings",
     ["ServerConfig", "ParameterServer"]),
    ("distkeras.checkpoint", "saving and resuming the centre variable", None),
    ("distkeras.errors", "the errors distkeras raises",
     ["DataError", "TrainingAborted", "CheckpointError", "WorkerError"]),
    ("distkeras.algorithms", "the update rules (for writing a new algorithm)", None),
]
ADDRESS = re.compile(r" at 0x[0-9a-f]+")
WIDTH = 92


def public_names(module: ModuleType, only: list[str] | None = None) -> list[str]:
    names = only or getattr(module, "__all__", None)
    if names is None:
        names = [n for n, obj in vars(module).items() if not n.startswith("_")
                 and (inspect.isclass(obj) or inspect.isfunction(obj))
                 and getattr(obj, "__module__", None) == module.__name__]
    if only:
        return list(only)
    return sorted(names, key=lambda n: (not inspect.isclass(getattr(module, n)), n.lower()))


def _parameters(obj) -> list[inspect.Parameter] | None:
    """The parameters, with ``*args, **kwargs`` that are passed on to a distkeras base class
    replaced by that base class's parameters (a trainer shows every argument it takes)."""
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return None
    kinds = {p.kind for p in params}
    if inspect.isclass(obj) and inspect.Parameter.VAR_KEYWORD in kinds:
        base = next((b for b in obj.__mro__[1:] if b.__module__.startswith("distkeras")
                     and "__init__" in vars(b)), None)
        inherited = _parameters(base) if base is not None else None
        if inherited:
            own = [p for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                       inspect.Parameter.VAR_KEYWORD)]
            names = {p.name for p in own}
            merged = [own[0]] if own and own[0].kind != inspect.Parameter.KEYWORD_ONLY else []
            merged += [p for p in inherited if p.name not in names]
            merged += [p for p in own if p not in merged]
            positional = [p for p in merged if p.kind != inspect.Parameter.KEYWORD_ONLY
                          and p.kind != inspect.Parameter.VAR_KEYWORD]
            keyword = [p for p in merged if p.kind == inspect.Parameter.KEYWORD_ONLY]
            return positional + keyword
    return params


def _param_text(p: inspect.Parameter) -> str:
    text = p.name
    if p.kind == inspect.Parameter.VAR_POSITIONAL:
        text = "*" + text
    elif p.kind == inspect.Parameter.VAR_KEYWORD:
        text = "**" + text
    if p.annotation is not inspect.Parameter.empty:
        annotation = p.annotation if isinstance(p.annotation, str) else \
            inspect.formatannotation(p.annotation)
        text += f": {annotation}"
    if p.default is not inspect.Parameter.empty:
        text += f" = {p.default!r}" if p.annotation is not inspect.Parameter.empty \
            else f"={p.default!r}"
    return ADDRESS.sub("", text)


def signature(name: str, obj) -> str:
    """``name(params) -> return`` on one line, or one parameter per line when long."""
    params = _parameters(obj)
    if params is None:
        return f"{name}(...)"
    if inspect.isclass(obj) or params and params[0].name in ("self", "cls"):
        params = [p for p in params if p.name not in ("self", "cls")]
    parts, star = [], False
    for p in params:
        if p.kind == inspect.Parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.kind == inspect.Parameter.VAR_POSITIONAL:
            star = True
        parts.append(_param_text(p))
    returns = ""
    if not inspect.isclass(obj):
        try:
            annotation = inspect.signature(obj).return_annotation
        except (TypeError, ValueError):
            annotation = inspect.Signature.empty
        if annotation is not inspect.Signature.empty:
            returns = f" -> {annotation if isinstance(annotation, str) else annotation}"
    one_line = f"{name}({', '.join(parts)}){returns}"
    if len(one_line) <= WIDTH:
        return one_line
    return f"{name}(\n" + "".join(f"    {part},\n" for part in parts) + f"){returns}"


ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc):`~?([^`]+)`")
DOUBLE = re.compile(r"(?<!`)``(?!`)")  # reST inline code; a Markdown code fence stays
SECTION = re.compile(r"(Args|Attributes|Raises|Returns|Example|Examples):")
#: sections whose entries are ``name: text`` lines (continuation lines indented)
LISTED = {"Args", "Attributes", "Raises"}
ENTRY = re.compile(r"(\*{0,2}[\w.]+):\s*(.*)")


def sections(text: str) -> str:
    """Google-style sections (``Args:``, ``Returns:`` ...) in Markdown: a bold heading, the
    entries of Args/Attributes/Raises as a list (``* `name`: text``, continuation lines kept
    with their entry), the body of the others as a paragraph. Code fences pass through.

    The entries are ``*`` items: a class's members follow as ``-`` items, and a different
    bullet keeps them from joining the class's last section list."""
    lines, out, i, fenced = text.splitlines(), [], 0, False
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else SECTION.fullmatch(line)
        if match is None:
            out.append(line)
            continue
        body = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            body.append(lines[i])
            i += 1
        body = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
        out += [f"**{match.group(1)}:**", ""]
        for entry in body:
            if match.group(1) not in LISTED or not entry.strip():
                out.append(entry.strip())
            elif entry.startswith(" "):
                out.append("  " + entry.strip())
            else:
                item = ENTRY.fullmatch(entry)
                out.append(f"* `{item.group(1)}`: {item.group(2)}" if item else f"* {entry}")
        if body:
            out.append("")
    return "\n".join(out).strip()


def doc(obj) -> str:
    """The docstring in Markdown: reST roles and double backticks become plain code, and
    Args/Returns/Raises sections become headed lists (see :func:`sections`)."""
    text = (inspect.getdoc(obj) or "").strip()
    name = getattr(obj, "__name__", None)
    if name and text.startswith(f"{name}("):  # a dataclass's generated docstring
        return ""
    return sections(DOUBLE.sub("`", ROLE.sub(r"`\1`", text)))


def members(cls: type) -> tuple[list[tuple[str, object]], dict[str, list[str]]]:
    """(members to document, {public base class: names inherited from it}).

    Members come from the class itself and from private distkeras bases; what a public
    distkeras base defines is only named (it is documented with that base).
    """
    documented, inherited, seen = [], {}, set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("distkeras"):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if not (inspect.isfunction(member) or isinstance(member, property)):
                continue
            seen.add(name)
            if klass is cls or klass.__name__.startswith("_"):
                documented.append((name, member))
            else:
                inherited.setdefault(klass.__name__, []).append(name)
    return sorted(documented, key=lambda item: item[0].lower()), inherited


def render_function(name: str, func) -> list[str]:
    lines = [f"### `{name}`", "", "```python", signature(name, func), "```", ""]
    text = doc(func)
    if text:
        lines += [text, ""]
    return lines


def public_bases(cls: type) -> list[str]:
    """Base class names, a private base replaced by its own (public) bases."""
    names: list[str] = []
    for base in cls.__bases__:
        if base is object:
            continue
        for name in public_bases(base) if base.__name__.startswith("_") else [base.__name__]:
            if name not in names:
                names.append(name)
    return names


def render_class(name: str, cls: type) -> list[str]:
    lines = [f"### class `{name}`", ""]
    if _parameters(cls) is not None:
        lines += ["```python", signature(name, cls), "```", ""]
    bases = public_bases(cls)
    if bases:
        lines += [f"Bases: {', '.join(f'`{b}`' for b in bases)}", ""]
    text = doc(cls)
    if text:
        lines += [text, ""]
    documented, inherited = members(cls)
    for member_name, member in documented:
        if isinstance(member, property):
            entry = f"- **`{member_name}`** (property)"
            text = doc(member)
        else:
            shown = signature(member_name, member)
            if "\n" in shown:
                entry = f"- **`{member_name}`**\n\n  ```python\n" + "\n".join(
                    f"  {line}" for line in shown.splitlines()) + "\n  ```"
            else:
                entry = f"- **`{shown}`**"
            text = doc(member)
        if text:
            entry += "\n\n" + "\n".join(f"  {line}" if line else "" for line in
                                         text.splitlines())
        lines += [entry, ""]
    for base, names in inherited.items():
        lines += [f"Inherited from `{base}`: " + ", ".join(f"`{n}`" for n in sorted(names))
                  + ".", ""]
    return lines


def render() -> str:
    import distkeras

    lines = ["# API reference", "",
             "Generated by `docs/gen_api.py` from the docstrings and signatures of distkeras "
             f"{distkeras.__version__}; do not edit by hand (run `python docs/gen_api.py`).",
             "", "The names below `distkeras` itself re-exports: "
             + ", ".join(f"`{n}`" for n in sorted(distkeras.__all__)) + ".", "",
             "## Modules", ""]
    for module_name, why, _ in MODULES:
        anchor = module_name.replace(".", "")
        lines.append(f"- [`{module_name}`](#{anchor}): {why}")
    lines.append("")
    for module_name, _, only in MODULES:
        module = importlib.import_module(module_name)
        lines += [f"## {module_name}", ""]
        text = doc(module)
        if text:
            lines += [text, ""]
        for name in public_names(module, only):
            obj = getattr(module, name)
            if inspect.isclass(obj):
                lines += render_class(name, obj)
            elif callable(obj):
                lines += render_function(name, obj)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if docs/api.md differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run python docs/gen_api.py",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
