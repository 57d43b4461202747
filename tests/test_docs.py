"""The documentation against the code: every `onnx-cp ...` command in README.md, CONTRIBUTING.md and
docs/**/*.md parses with the real CLI, every flag the docs name exists, every relative link resolves.

Commands come from code blocks (fenced or indented, `\\` continuations joined, several per line
after `&&`, `;` or `|`, `python -m onnx_cp.cli ...` too; a diagram's aligned second column, after
four or more spaces, is not part of the command) and from inline code. Each is parsed by
click's own parser on the command objects of ``onnx_cp.cli`` (``make_context``: options, values
and arguments are parsed and converted, nothing runs). Placeholders are allowed where a value
goes: an upper-case word (``--rank R``, ``-o OUT``) or ``...`` stands for a value of the
option's type, ``[...]`` marks optional parts, and a command that elides parts with ``...`` or
stands in prose (inline code) may leave out required ones. Inline code that starts with a flag
(`--calib DATA`) must name a flag of some onnx-cp command or of a script in tools/.
Relative links, images included, must name a file or folder that exists, and an ``#anchor``
into a Markdown file one of its headings.
"""
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from onnx_cp.cli import cli

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"^(\.\.\.|[A-Z][A-Z0-9_]*)$")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
ANNOTATION = re.compile(r"(?<=\S) {4,}")  # a diagram's aligned second column
OPERATORS = {"&&", "||", ";", "|", "&"}


def doc_files(root: Path = REPO) -> list[Path]:
    files = [root / name for name in ("README.md", "CONTRIBUTING.md") if (root / name).exists()]
    return files + sorted((root / "docs").rglob("*.md"))


@dataclass(frozen=True)
class Command:
    line: int
    text: str
    inline: bool  # from inline code in prose, which may leave required parts out


def split_code(text: str) -> tuple[list[tuple[int, str]], str]:
    """The code lines (fenced, or indented by 4 spaces or a tab) with their line numbers, and the
    prose with code lines blanked, so that positions in it keep their line numbers."""
    code, prose, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            prose.append("")
        elif fenced or line.startswith(("    ", "\t")):
            code.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return code, "\n".join(prose)


def commands(text: str) -> list[Command]:
    """Every onnx-cp command in a Markdown text, with the line it starts on."""
    code, prose = split_code(text)
    found = []
    pending, start = "", 0
    for number, line in code:
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found += [Command(start, cmd, False) for cmd in invocations(ANNOTATION.split(pending + line.strip())[0])]
        pending = ""
    for match in INLINE.finditer(prose):
        span = " ".join(match.group(2).split())
        if span.startswith("onnx-cp ") or "onnx_cp.cli " in span:
            line = prose.count("\n", 0, match.start()) + 1
            found += [Command(line, cmd, True) for cmd in invocations(span)]
    return found


def invocations(line: str) -> list[str]:
    """The onnx-cp command lines in a shell line: ``onnx-cp ...`` or ``... -m onnx_cp.cli ...``
    in each part between ``&&``, ``;`` and pipes, comments dropped."""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens = list(lexer)
    except ValueError:  # an unclosed quote: not a shell line
        return []
    out, part = [], []
    for token in tokens + [";"]:
        if token not in OPERATORS:
            part.append(token)
            continue
        if "onnx-cp" in part:
            out.append(shlex.join(part[part.index("onnx-cp") + 1:]))
        elif "onnx_cp.cli" in part and part.index("onnx_cp.cli") > 0 and part[part.index("onnx_cp.cli") - 1] == "-m":
            out.append(shlex.join(part[part.index("onnx_cp.cli") + 1:]))
        part = []
    return out


def check_command(command: Command) -> str | None:
    """None when the command parses with the real CLI, else why not."""
    tokens = [token.strip("[]") for token in shlex.split(command.text)]
    tokens = [token for token in tokens if token]
    elided = "..." in tokens
    group = click.Context(cli, info_name="onnx-cp")
    group_flags = {opt for param in cli.params for opt in param.opts + param.secondary_opts}
    while tokens and tokens[0].startswith("-"):
        if tokens[0] not in group_flags:
            return f"onnx-cp has no option {tokens[0]}"
        tokens.pop(0)
    tokens = [token for token in tokens if token != "..."] if not tokens or tokens[0] == "..." else tokens
    if not tokens:
        return None
    name, args = tokens[0], tokens[1:]
    sub = cli.get_command(group, name)
    if sub is None:
        return f"onnx-cp has no command {name!r} (it has {', '.join(sorted(cli.commands))})"
    args = fill_placeholders(sub, args, command.inline)
    try:  # click's own parsing, without the commands' one-line error wrapper and without running anything
        click.Command.make_context(sub, name, args, parent=group)
    except click.exceptions.Exit:  # --help
        return None
    except click.MissingParameter as exc:
        if command.inline or elided:
            return None
        return f"onnx-cp {name}: {exc.format_message()}"
    except click.UsageError as exc:
        return f"onnx-cp {name}: {exc.format_message()}"
    return None


def fill_placeholders(command: click.Command, args: list[str], inline: bool = False) -> list[str]:
    """``args`` with each placeholder value (``N``, ``PATH``, ``...``) replaced by a value of its
    option's type; other ``...`` dropped. Inline code may name an option without its value
    (`onnx-cp rewrite --search-storage`): it gets one too. Unknown options are left for the
    parser to refuse."""
    options = {opt: param for param in command.params if isinstance(param, click.Option)
               for opt in param.opts + param.secondary_opts}
    out, k = [], 0
    while k < len(args):
        token = args[k]
        name, _, inline_value = token.partition("=") if token.startswith("--") else (token, "", "")
        option = options.get(name)
        if option is not None and not option.is_flag and option.nargs == 1:
            if inline_value:
                out.append(f"{name}={sample(option.type) if PLACEHOLDER.match(inline_value) else inline_value}")
            elif k + 1 < len(args):
                value = args[k + 1]
                out += [token, sample(option.type) if PLACEHOLDER.match(value) else value]
                k += 1
            else:
                out += [token, sample(option.type)] if inline else [token]
        elif token != "...":
            out.append(token)
        k += 1
    return out


def sample(kind: click.ParamType) -> str:
    """A value that ``kind`` accepts, standing in for a placeholder."""
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, click.types.IntParamType):
        return "1"
    if isinstance(kind, click.types.FloatParamType):
        return "1.0"
    if isinstance(kind, click.types.BoolParamType):
        return "true"
    return "placeholder"


def known_flags() -> set[str]:
    """Every long option of every onnx-cp command, and every ``--flag`` string in tools/."""
    flags = {opt for param in cli.params for opt in param.opts + param.secondary_opts}
    for command in cli.commands.values():
        flags |= {opt for param in command.params for opt in param.opts + param.secondary_opts}
    for script in (REPO / "tools").rglob("*.py"):
        flags |= set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"']", script.read_text()))
    return {flag for flag in flags if flag.startswith("--")}


def flag_mentions(text: str) -> list[tuple[int, str]]:
    """The flags named by inline code that starts with a flag (`--calib DATA`), with their lines."""
    _, prose = split_code(text)
    out = []
    for match in INLINE.finditer(prose):
        span = match.group(2).strip()
        if span.startswith("--"):
            line = prose.count("\n", 0, match.start()) + 1
            out += [(line, flag) for flag in FLAG.findall(span)]
    return out


def links(text: str) -> list[tuple[int, str]]:
    """Relative link targets (images too) outside code, with their lines."""
    _, prose = split_code(text)
    prose = INLINE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)
    out = []
    for match in LINK.finditer(prose):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        out.append((prose.count("\n", 0, match.start()) + 1, target))
    return out


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings."""
    code, prose = split_code(path.read_text())
    out = set()
    for line in prose.splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def check_link(path: Path, target: str) -> str | None:
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    if not dest.exists():
        return f"broken link {target}: {dest} does not exist"
    if anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
        return f"broken link {target}: {dest.name} has no heading #{anchor}"
    return None


def problems(files: list[Path], root: Path = REPO) -> list[str]:
    """Every stale command, flag and link in ``files``, as 'file:line: what'."""
    flags = known_flags()
    out = []
    for path in files:
        text = path.read_text()
        where = lambda line: f"{path.relative_to(root) if path.is_relative_to(root) else path}:{line}"  # noqa: E731
        for command in commands(text):
            reason = check_command(command)
            if reason:
                out.append(f"{where(command.line)}: `onnx-cp {command.text}`: {reason}")
        for line, flag in flag_mentions(text):
            if flag not in flags:
                out.append(f"{where(line)}: {flag} is no option of onnx-cp or of a script in tools/")
        for line, target in links(text):
            reason = check_link(path, target)
            if reason:
                out.append(f"{where(line)}: {reason}")
    return out


def test_the_docs_commands_flags_and_links_hold():
    files = doc_files()
    assert REPO / "README.md" in files and len(files) > 5
    assert sum(len(commands(path.read_text())) for path in files) > 20  # the check sees the commands
    found = problems(files)
    assert not found, "stale documentation:\n" + "\n".join(found)


PLANTED = """# Title

Run it:

    onnx-cp rewrite model.onnx --rank 8 -o fast.onnx
    onnx-cp rewrite model.onnx --rank-all 8 -o fast.onnx

```
python3 -m venv .venv && onnx-cp bench a.onnx b.onnx --threads many
```

Inline, `onnx-cp rewrite MODEL --target-speedup S -o OUT` is fine, and so is `onnx-cp evaluate
m.onnx --data test.npz`; `onnx-cp rewrit m.onnx` is not, nor is `--no-such-flag`.
See [the guide](guide.md), [a section](guide.md#usage), [gone](missing.md), [bad anchor](guide.md#nowhere),
![figure](images/plot.png) and [the web](https://example.com/x.md).
`[not a link](nowhere.md)` sits in code.

    onnx-cp finetune m.onnx --data d.npz -o t.onnx \\
        --epochs 2 --lr-typo 0.1
"""


def test_a_stale_flag_or_link_fails_with_its_file_and_line(tmp_path):
    (tmp_path / "guide.md").write_text("# Guide\n\n## Usage\n")
    readme = tmp_path / "README.md"
    readme.write_text(PLANTED)
    found = problems([readme], root=tmp_path)
    joined = "\n".join(found)
    assert "README.md:6: `onnx-cp rewrite model.onnx --rank-all 8 -o fast.onnx`" in joined
    assert "No such option '--rank-all'" in joined
    assert any(p.startswith("README.md:9:") and "'many' is not a valid integer" in p for p in found)
    assert any(p.startswith("README.md:13:") and "no command 'rewrit'" in p for p in found)
    assert any(p.startswith("README.md:13:") and "--no-such-flag is no option" in p for p in found)
    assert any(p.startswith("README.md:14:") and "missing.md" in p for p in found)
    assert any(p.startswith("README.md:14:") and "no heading #nowhere" in p for p in found)
    assert any(p.startswith("README.md:15:") and "images/plot.png" in p for p in found)
    assert any(p.startswith("README.md:18:") and "--lr-typo" in p for p in found)
    assert len(found) == 8, joined  # nothing else: placeholders, prose, the web link and code pass


def test_the_planted_page_passes_once_mended(tmp_path):
    (tmp_path / "guide.md").write_text("# Guide\n\n## Usage\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "plot.png").write_bytes(b"")
    (tmp_path / "README.md").write_text(
        PLANTED.replace("--rank-all", "--rank").replace("many", "2").replace("rewrit m", "rewrite m")
        .replace("`--no-such-flag`", "`--calib DATA`").replace("(missing.md)", "(guide.md)")
        .replace("#nowhere", "#usage").replace("--lr-typo", "--lr"))
    assert problems([tmp_path / "README.md"], root=tmp_path) == []


@pytest.mark.parametrize("line, expected", [
    ("onnx-cp inspect m.onnx", ["inspect m.onnx"]),
    ("pip install -e . && onnx-cp rewrite m.onnx --rank 8 -o f.onnx && onnx-cp bench m.onnx f.onnx",
     ["rewrite m.onnx --rank 8 -o f.onnx", "bench m.onnx f.onnx"]),
    ("torchrun --nnodes 2 -m onnx_cp.cli finetune f.onnx --data d.npz -o t.onnx  # node 0",
     ["finetune f.onnx --data d.npz -o t.onnx"]),
    ("onnx-cp rewrite m.onnx --rank 'conv2*=200' -o f.onnx | tee log", ["rewrite m.onnx --rank 'conv2*=200' -o f.onnx"]),
    ("python tools/bench_solver.py --quick", []),
])
def test_command_lines_are_found_in_shell_lines(line, expected):
    assert invocations(line) == expected
