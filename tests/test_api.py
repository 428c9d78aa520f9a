"""The public API: what ``from aelab import ...`` gives, and the documentation's examples (the README
and docs/*.md): its Python blocks run as written, its command lines parse."""

import importlib.util
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import aelab

ROOT = Path(__file__).resolve().parents[1]


def test_no_public_name_is_also_a_submodule():
    clashes = [name for name in aelab.__all__
               if importlib.util.find_spec(f"aelab.{name}") is not None
               and not isinstance(getattr(aelab, name), type(aelab))]
    assert clashes == []


def test_a_public_function_stays_a_function_whatever_was_imported_before():
    # importing every submodule first loads them into the package, where a submodule of the same
    # name as a lazy export would shadow it (``from aelab import infer`` gave the module)
    code = ("import pkgutil, importlib, aelab\n"
            "for info in pkgutil.walk_packages(aelab.__path__, 'aelab.'):\n"
            "    info.name.endswith('__main__') or importlib.import_module(info.name)\n"
            "import aelab as package\n"
            "bad = [n for n in package.__all__ if n != '__version__' and type(getattr(package, n)).__name__ == 'module']\n"
            "from aelab import infer, export, train\n"
            "assert callable(infer) and callable(export) and callable(train), (infer, export, train)\n"
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(kind: str, documents: list[Path] = DOCUMENTS) -> list[tuple[str, str]]:
    """(where, text) of every ```KIND block of the README and the docs pages (or of ``documents``), in order."""
    return [(f"{path.relative_to(ROOT)} {kind} block {number + 1}", text) for path in documents
            for number, text in enumerate(re.findall(rf"```{kind}\n(.*?)```", path.read_text(), re.S))]


def command_lines(text: str) -> list[str]:
    """The `aelab ...` lines of a bash block as a user copies them: comments left out, `.venv/bin/aelab`
    said `aelab`, the part of a line after `&&` where the command follows a set-up."""
    lines = [line.split(" #")[0].strip().split("&&")[-1].strip() for line in text.splitlines()]
    return [line.replace(".venv/bin/aelab", "aelab") for line in lines if line.startswith(("aelab ", ".venv/bin/aelab"))]


def readme_python_blocks() -> list[str]:
    return [text for _, text in blocks("python")]


def test_the_documents_have_python_examples_and_every_page_is_linked():
    assert len(readme_python_blocks()) >= 3 and any("README" in where for where, _ in blocks("python"))
    readme = (ROOT / "README.md").read_text()
    assert [path.name for path in DOCUMENTS[1:] if f"docs/{path.name}" not in readme] == []


def test_every_command_line_of_the_documents_parses():
    """Each `aelab ...` line of a bash block is a command the parser accepts (options that exist,
    values of the right kind), as a user would copy it."""
    import shlex

    from aelab.cli import build_parser

    commands = [(where, line) for where, text in blocks("bash") for line in command_lines(text)]
    assert len(commands) >= 20
    for where, command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"{where}: `{command}` does not parse")


@pytest.mark.parametrize("number", range(len(readme_python_blocks())))
def test_every_python_block_of_the_documents_runs_as_written(number, fake_mnist, tmp_path, monkeypatch, capsys):
    """Each block runs unchanged, in a fresh namespace, in an empty folder, on small fake MNIST
    files; from outside the block, training is cut to one epoch."""
    from aelab import training

    real_train = training.train

    def one_epoch(config=None, out=None, **options):
        config = config or aelab.RunConfig()
        return real_train(replace(config, train=replace(config.train, epochs=1)), out, **options)

    monkeypatch.setattr(training, "train", one_epoch)
    monkeypatch.setitem(vars(aelab), "train", one_epoch)  # (the package caches what it has exported)
    monkeypatch.chdir(tmp_path)
    where, text = blocks("python")[number]
    exec(compile(text, where, "exec"), {})


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The aelab modules that ``module`` (the file ``path``) imports anywhere: at the top, inside
    functions, under TYPE_CHECKING."""
    import ast

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module or ""
            # (``from package import submodule`` imports the submodule; the package is its parent, which any
            # import of a submodule initialises first: not an edge of its own)
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name in modules and name not in (module, "aelab")}


def test_no_two_modules_import_each_other_even_inside_functions():
    """The layers go one way (e.g. steps use distributed, never the reverse; callbacks type against a
    protocol, not the Trainer's module): no cycle in the graph of every import of every module."""
    source = ROOT / "src"
    files = {".".join(path.relative_to(source).with_suffix("").parts).removesuffix(".__init__"): path
             for path in (source / "aelab").rglob("*.py")}
    graph = {module: _imports(path, module, set(files)) for module, path in files.items()}
    from aelab.config import FAMILIES

    graph["aelab.models.registry"] |= {entry[0] for entry in FAMILIES.values()}  # (imported by name, importlib)
    assert len(graph) > 20 and graph["aelab.steps"] >= {"aelab.distributed"}

    def cycle_from(start: str) -> list[str] | None:
        paths = [[start]]
        while paths:
            path = paths.pop()
            for following in sorted(graph[path[-1]]):
                if following == start:
                    return path + [start]
                if following not in path and len(path) < len(graph):
                    paths.append(path + [following])
        return None

    cycles = [cycle for cycle in map(cycle_from, sorted(graph)) if cycle]
    assert cycles == [], cycles[0]


def test_the_code_map_names_every_module():
    """Every module of src/aelab has its line (its one job) in the code map of docs/development.md."""
    text = (ROOT / "docs" / "development.md").read_text()
    block = text[text.index("```\nsrc/aelab/\n"):]
    block = block[: block.index("```", 4)]
    listed = set(re.findall(r"^\s+([a-z_]+\.py)\s+\S", block, re.MULTILINE))
    source = ROOT / "src" / "aelab"
    modules = {path.name for path in source.rglob("*.py") if path.name != "__init__.py" or path.parent == source}
    assert modules - listed == set(), "not in the code map of docs/development.md"
