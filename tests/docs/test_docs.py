"""The docs run: every code block of README.md and docs/*.md is executed or checked.

How to write README.md and docs/*.md so that these tests pass:

- Every fenced code block names its language.
- ```python blocks are executed, each in a fresh namespace, with the repository root as working
  directory and a time limit of ``BLOCK_SECONDS`` (use small sizes). A block that cannot run here is
  marked on the line directly before its opening fence with

      <!-- not run: REASON -->

  where REASON says why (e.g. "needs a GPU", "needs deepmind_lab"). A block that quotes part of a
  file is marked ``<!-- excerpt of: PATH -->`` instead: it is not run, but each of its code lines
  (comments and ``...`` elisions aside) must occur in PATH.
- ```bash blocks are not executed (they train for minutes). Every repository path in them must exist,
  and every ``--model.init_args.NAME`` / ``--data.init_args.NAME`` / ``--trainer.NAME`` option of a
  ``python -m recipes fit --config X`` command (``bash scripts/main.sh`` uses
  ``configs/default.yaml``) must be an argument of the class that X configures. The same holds for
  such commands in backticks in the prose and for the options that ``scripts/*.sh`` suggest.
- Other languages (``text`` for printed output, ...) are neither run nor checked.
- Every relative markdown link, and every repository path in the prose (in backticks or not:
  ``rtrl_modules/...``, ``recipes/...``, ``configs/...``, ``docs/...``, ``tests/...``, ``scripts/...``,
  ``benchmarks/...``; in docs/*.md also ``figures/...`` and ``examples/...``, relative to docs/) must
  exist. ``<name>``, ``*`` and ``{a,b}`` are patterns that must match at least one file. Paths under
  the output folders in ``OUTPUT_DIRS`` (what runs write) are not checked.
- Configs leave ``trainer.logger`` to the CLI, so that ``trainer.default_root_dir`` decides where the
  logs go (as the docs say).
"""

from __future__ import annotations

import glob
import importlib
import inspect
import re
import shlex
import signal
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_SECONDS = 60
OUTPUT_DIRS = ("runs/",)  # written by the recipes; never in the repository
REPO_DIRS = ("rtrl_modules", "recipes", "configs", "docs", "tests", "scripts", "benchmarks", "runs")
DOC_RELATIVE_DIRS = ("figures", "examples")  # relative to docs/ in docs/*.md
RUN_LANGUAGES = {"python"}
CHECK_LANGUAGES = {"bash", "sh", "shell", "console"}
MAIN_SCRIPT_CONFIG = "configs/default.yaml"  # scripts/main.sh runs `python -m recipes fit --config` this

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<lang>[^\s`]*)")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not run|excerpt of):\s*(?P<arg>.*?)\s*-->\s*$")
ANY_COMMENT = re.compile(r"^\s*<!--.*-->\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(?<!`)`(?P<code>[^`]+)`(?!`)")
PATH = re.compile(
    r"(?<![\w./~-])(?P<path>(?:" + "|".join(REPO_DIRS + DOC_RELATIVE_DIRS) + r")/[\w.,/*<>{}-]*)"
)
OPTION = re.compile(r"--(?P<group>model\.init_args|data\.init_args|trainer)\.(?P<name>\w+)")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: tuple[str, str] | None  # ("not run", reason) or ("excerpt of", path)
    comment: str | None  # an HTML comment directly before the fence

    @property
    def id(self) -> str:
        return f"{label(self.doc)}:{self.line}"


def label(doc: Path) -> str:
    return str(doc.relative_to(ROOT)) if doc.is_relative_to(ROOT) else doc.name


@cache
def parse(doc: Path) -> tuple[tuple[Block, ...], str]:
    """The fenced blocks of ``doc`` and its prose (the text with the blocks blanked out)."""
    lines = doc.read_text().splitlines()
    blocks, prose, i = [], [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append(lines[i])
            i += 1
            continue
        fence, end = match["fence"], i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence[0] * len(fence)):
            end += 1
        before = lines[i - 1] if i > 0 else ""
        marker = MARKER.match(before)
        indent = len(match["indent"])
        code = "\n".join(line[indent:] for line in lines[i + 1 : end])
        blocks.append(
            Block(
                doc,
                i + 1,
                match["lang"].lower(),
                code,
                (marker["kind"], marker["arg"]) if marker else None,
                before.strip() if ANY_COMMENT.match(before) else None,
            )
        )
        prose.extend([""] * (end + 1 - i))
        i = end + 1
    return tuple(blocks), "\n".join(prose)


def all_blocks() -> list[Block]:
    return [block for doc in DOCS for block in parse(doc)[0]]


PYTHON_BLOCKS = [b for b in all_blocks() if b.lang in RUN_LANGUAGES and b.marker is None]


# ------------------------------------------------------------------------------------ python blocks
class BlockTimeout(Exception):
    pass


def _timeout(signum, frame):
    raise BlockTimeout(f"a doc block ran longer than {BLOCK_SECONDS} s: use smaller sizes")


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_block_runs(block, monkeypatch):
    monkeypatch.chdir(ROOT)
    torch.manual_seed(0)
    # Padded so that tracebacks give the line in the Markdown file.
    code = compile("\n" * block.line + block.code, str(block.doc), "exec")
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, BLOCK_SECONDS)
    try:
        exec(code, {"__name__": "__main__"})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_there_are_python_blocks_to_run():
    assert len(PYTHON_BLOCKS) >= 3, [b.id for b in PYTHON_BLOCKS]


def _code_lines(text: str) -> list[str]:
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith(("...", "#"))]


@pytest.mark.parametrize("doc", DOCS, ids=label)
def test_blocks_name_their_language_and_markers_are_valid(doc):
    problems = []
    for block in parse(doc)[0]:
        if not block.lang:
            problems.append(f"{block.id}: the fence names no language (```python, ```bash, ```text)")
        if block.comment and block.marker is None:
            problems.append(f"{block.id}: unknown marker {block.comment!r} (see tests/docs/test_docs.py)")
        if block.marker is None:
            continue
        kind, arg = block.marker
        if block.lang not in RUN_LANGUAGES:
            problems.append(f"{block.id}: marker on a {block.lang or 'plain'} block, which is never run")
        if kind == "not run" and not arg:
            problems.append(f"{block.id}: `<!-- not run: REASON -->` needs a reason")
        if kind == "excerpt of":
            source = ROOT / arg
            if not source.is_file():
                problems.append(f"{block.id}: excerpt of a missing file {arg}")
                continue
            have = set(_code_lines(source.read_text()))
            missing = [line for line in _code_lines(block.code) if line not in have]
            if missing:
                problems.append(f"{block.id}: lines not in {arg}: {missing}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------- paths
def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [p for alt in match[1].split(",") for p in _expand_braces(head + alt + tail)]


def path_exists(path: str, base: Path) -> bool:
    pattern = re.sub(r"<[^<>]*>", "*", path)
    for candidate in _expand_braces(pattern):
        if any(ch in candidate for ch in "*?["):
            if not glob.glob(str(base / candidate)):
                return False
        elif not (base / candidate).exists():
            return False
    return True


def repo_paths(text: str) -> list[str]:
    """Repository paths mentioned in ``text`` (trailing punctuation removed)."""
    paths = []
    for match in PATH.finditer(text):
        path = match["path"].rstrip(".,")
        if path.count("{") == path.count("}") and path.count("<") == path.count(">"):
            paths.append(path)
    return paths


def missing_paths(doc: Path) -> list[str]:
    blocks, prose = parse(doc)
    texts = [prose, *(b.code for b in blocks if b.lang in CHECK_LANGUAGES)]
    problems = []
    for text in texts:
        for path in repo_paths(text):
            if path.startswith(OUTPUT_DIRS):
                continue
            relative_to_doc = path.split("/")[0] in DOC_RELATIVE_DIRS
            if relative_to_doc and doc.parent == ROOT:
                continue  # README.md: not a docs/ path
            base = doc.parent if relative_to_doc else ROOT
            if not path_exists(path, base):
                problems.append(f"{label(doc)}: `{path}` does not exist")
    for match in LINK.finditer(prose):
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # URL or anchor
        target = target.split("#")[0]
        if not (doc.parent / target).exists():
            problems.append(f"{label(doc)}: link target {target} does not exist")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=label)
def test_referenced_files_exist(doc):
    problems = missing_paths(doc)
    assert not problems, "\n".join(problems)


def test_path_check_finds_missing_files(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "See `tests/modules/no_such_test.py`, [a link](no_such.md), `configs/{default,nope}.yaml` and\n"
        "`runs/memory/version_<n>/` (an output). `configs/default.yaml` exists.\n"
        "```bash\npython scripts/no_such.py\n```\n"
    )
    text = "\n".join(missing_paths(doc))
    assert "no_such_test.py" in text and "no_such.md" in text and "nope" in text
    assert "scripts/no_such.py" in text and "runs/" not in text and "`configs/default.yaml`" not in text


# ------------------------------------------------------------------------------ recipe CLI options
@cache
def config_classes(config: str) -> dict[str, set[str] | None]:
    """For ``model`` and ``data`` of a config: the ``__init__`` arguments of its ``class_path``
    (None: the class takes ``**kwargs``)."""
    data = yaml.safe_load((ROOT / config).read_text()) or {}
    out: dict[str, set[str] | None] = {}
    for group in ("model", "data"):
        class_path = (data.get(group) or {}).get("class_path")
        if not class_path:
            continue
        module, _, name = class_path.rpartition(".")
        params = inspect.signature(getattr(importlib.import_module(module), name).__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            out[group] = None
        else:
            out[group] = set(params) - {"self"}
    return out


@cache
def trainer_arguments() -> set[str]:
    from lightning.pytorch import Trainer

    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def bad_options(command: str, config: str | None = None) -> list[str]:
    """Options of a recipe command that its config's classes do not take."""
    if config is None:
        try:
            words = shlex.split(command, comments=True)
        except ValueError:
            words = command.split()
        words = [w for word in words for w in word.split("=", 1)[:1] + word.split("=", 1)[1:]]
        if "--config" in words and words.index("--config") + 1 < len(words):
            config = words[words.index("--config") + 1]
        elif "scripts/main.sh" in command:
            config = MAIN_SCRIPT_CONFIG
        else:
            return []
    if re.search(r"[<>*{}]", config) or not (ROOT / config).is_file():
        return []  # a pattern (or a missing file, which the path test reports)
    classes = config_classes(config)
    problems = []
    for match in OPTION.finditer(command):
        group, name = match["group"].split(".")[0], match["name"]
        allowed = trainer_arguments() if group == "trainer" else classes.get(group, set())
        if allowed is not None and name not in allowed:
            problems.append(f"{match[0]}: not an argument of {group} in {config}")
    return problems


def commands(doc: Path) -> list[str]:
    """Recipe commands of ``doc``: lines of bash blocks (continuations joined) and inline code."""
    blocks, prose = parse(doc)
    out = [" ".join(m["code"].split()) for m in INLINE_CODE.finditer(prose)]
    for block in blocks:
        if block.lang in CHECK_LANGUAGES:
            out += block.code.replace("\\\n", " ").splitlines()
    return [c for c in out if "recipes fit" in c or "scripts/main.sh" in c]


@pytest.mark.parametrize("doc", DOCS, ids=label)
def test_recipe_options_in_docs_exist(doc):
    problems = [f"{label(doc)}: {p}  [{c}]" for c in commands(doc) for p in bad_options(c)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("script", sorted((ROOT / "scripts").glob("*.sh")), ids=lambda p: p.name)
def test_recipe_options_in_scripts_exist(script):
    text = script.read_text()
    match = re.search(r"recipes fit --config[ =](\S+)", text)
    if match is None:
        return
    assert not bad_options(text, match[1]), bad_options(text, match[1])


def test_option_check_finds_unknown_options():
    assert bad_options("bash scripts/main.sh --model.init_args.core=tbptt") == []
    assert bad_options("bash scripts/main.sh --model.init_args.gradient=tbptt")
    cmd = "python -m recipes fit --config configs/copy_task/tbptt.yaml --data.init_args.max_length 20"
    assert bad_options(cmd) == []
    assert bad_options(cmd + " --data.init_args.length=3 --trainer.max_stepz=2")[1].startswith("--trainer")


# ---------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("config", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_configs_leave_the_loggers_to_the_cli(config):
    """A logger set in a config has its own save_dir, so ``--trainer.default_root_dir`` would not move
    the logs; the CLI's default loggers (CSV + TensorBoard) live under ``trainer.default_root_dir``."""
    trainer = (yaml.safe_load(config.read_text()) or {}).get("trainer") or {}
    assert trainer.get("logger") in (None, True), f"{label(config)} sets trainer.logger"


def test_copy_task_logs_go_under_the_default_root_dir(tmp_path):
    from recipes.cli import main

    cli = main(
        ["--config", str(ROOT / "configs/copy_task/rtrl.yaml"), f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    assert len(cli.trainer.loggers) == 2
    for logger in cli.trainer.loggers:
        assert Path(logger.log_dir).is_relative_to(tmp_path), logger.log_dir
        assert Path(logger.log_dir).parent.name == "rtrl"


def test_recipes_doc_states_the_default_config():
    """The row of ``default.yaml`` in docs/recipes.md's config table gives its task, M, N and budget."""
    config = yaml.safe_load((ROOT / "configs/default.yaml").read_text())["model"]["init_args"]
    lines = (ROOT / "docs/recipes.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| `default")]
    assert len(rows) == 1, rows
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert f"delay {config['env_options']['delay']}" in cells[1], cells
    assert cells[2:5] == [
        str(config["segment_length"]),
        str(config["hidden_size"]),
        f"{config['total_frames'] // 1000}k frames",
    ], cells
