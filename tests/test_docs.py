"""The front page cannot rot: every relative link and image in README.md and
docs/*.md points to a file that exists (and, with a #fragment, to a heading
of that file), every `python train.py|evaluate.py|predict.py|... ...` command in a
fenced block of README.md or docs/*.md parses its flags, every `module.name`
the pages write in code exists in the code, every `--flag` they name exists
in the command they name it for, with the default they state, and every
fenced Python snippet runs, unless it is marked as needing what the tests do
not have (the snippets' run is the one slow test here)."""

import argparse
import ast
import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import os
import re
import shlex
from pathlib import Path

import pytest

import bench
import data
import dis2
import evaluate
import figures
import losses
import predict
import probe
import report
import reproduce
import runtime
import synth
import train

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^[ \t]*(```|~~~)(.*?)$\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)  # indented: in a list item
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=\"([^\"]+)\"", re.I)
# Each command and how its flags are parsed without running it; synth.py and probe.py parse inside main.
SCRIPTS = {"train.py": train.parse_args, "evaluate.py": evaluate.parse_args, "predict.py": predict.parse_args,
           "reproduce.py": reproduce.parse_args, "bench.py": bench.parse_args, "synth.py": synth.main,
           "probe.py": probe.main, "data.py": data.main}
PARSED_IN_MAIN = ("synth.py", "probe.py", "data.py")  # data.py only answers that its commands moved


def page_id(path):
    return str(path.relative_to(ROOT))


def prose(text):
    """The text outside fenced code blocks and inline code spans: where links render."""
    text = FENCE.sub("", text)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text, flags=re.S)


def anchors(path):
    """GitHub's heading anchors of a Markdown file: lower case, punctuation
    dropped, spaces to hyphens, repeats numbered -1, -2, ..."""
    seen, found = {}, set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path):
    text = prose(path.read_text(encoding="utf-8"))
    return LINK.findall(text) + HTML_LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_and_images_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file, _, fragment = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading with the anchor #{fragment} in {resolved.name}")
    assert not broken, f"{page_id(page)}: broken links:\n" + "\n".join(broken)


def shell_commands(text):
    """The commands of the fenced blocks of a Markdown text, as argument lists:
    line continuations joined, comments dropped, split at &&, ||, ; and |."""
    for match in FENCE.finditer(text):
        if match.group(2).strip().lower() not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in match.group(3).replace("\\\n", " ").splitlines():
            if not re.search(r"\b(?:%s)\b" % "|".join(map(re.escape, SCRIPTS)), line):
                continue
            command = []
            for token in shlex.split(line, comments=True):
                if token in ("&&", "||", ";", "|"):
                    yield command
                    command = []
                elif token.endswith(";") and not token.endswith("\\;"):
                    command.append(token[:-1])
                    yield command
                    command = []
                else:
                    command.append(token)
            yield command


def script_invocations(text):
    """(script, argv) of every `python[3] [options] SCRIPT ...` or `torchrun [options] SCRIPT ...` command."""
    for command in shell_commands(text):
        runners = [i for i, token in enumerate(command) if Path(token).name in ("python", "python3", "torchrun")]
        if not runners:
            continue
        rest = command[runners[0] + 1:]
        scripts = [i for i, token in enumerate(rest) if token in SCRIPTS]
        # python -m ..., python -c ..., python tools/x.py: not one of ours
        if scripts and all(token.startswith("-") for token in rest[:scripts[0]]):
            yield rest[scripts[0]], rest[scripts[0] + 1:]


class Parsed(Exception):
    """Raised instead of running a command once its flags have parsed."""


def parse_in_main(script, argv, monkeypatch):
    parse_args = data.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(data.ArgumentParser, "parse_args", parse_only)
    with pytest.raises(Parsed):
        SCRIPTS[script](argv)


def test_command_splitting():
    text = ("```bash\n"
            "python synth.py d --tiles 3 && \\\n"
            "python train.py --data d --epochs 1   # a comment && python evaluate.py --bogus\n"
            "OMP_NUM_THREADS=1 python evaluate.py --missing rgir; python -m pytest -q\n"
            "torchrun --nproc_per_node=2 train.py --resume runs/x\n"
            "python -c \"import train\"\n"
            "```\n"
            "```python\npython train.py --not-a-shell-block\n```\n")
    assert list(script_invocations(text)) == [
        ("synth.py", ["d", "--tiles", "3"]),
        ("train.py", ["--data", "d", "--epochs", "1"]),
        ("evaluate.py", ["--missing", "rgir"]),
        ("train.py", ["--resume", "runs/x"]),
    ]


def test_a_bad_flag_fails_to_parse(monkeypatch):
    with pytest.raises(SystemExit):
        train.parse_args(["--data", "d", "--no-such-flag"])
    with pytest.raises(SystemExit):
        parse_in_main("synth.py", ["d", "--tiles", "0"], monkeypatch)
    with pytest.raises(data.DataError, match="has moved: use `python synth.py"):
        parse_in_main("data.py", ["synth", "d"], monkeypatch)
    with pytest.raises(data.DataError, match="has moved: use `python predict.py"):
        evaluate.parse_args(["--predict", "maps/", "--rgir", "ortho.tif"])


def test_readme_has_commands():
    scripts = {script for script, _ in script_invocations((ROOT / "README.md").read_text(encoding="utf-8"))}
    assert scripts == set(SCRIPTS) - {"data.py"}


COMMANDS = [(page, script, argv) for page in PAGES
            for script, argv in script_invocations(page.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("page, script, argv", COMMANDS,
                         ids=[f"{page_id(p)}: {s} {' '.join(a)}" for p, s, a in COMMANDS])
def test_commands_parse(page, script, argv, monkeypatch, capsys):
    try:
        if script in PARSED_IN_MAIN:
            parse_in_main(script, argv, monkeypatch)
        else:
            SCRIPTS[script](argv)
    except (SystemExit, data.DataError) as error:
        reason = error if isinstance(error, data.DataError) else capsys.readouterr().err.strip()
        pytest.fail(f"{page_id(page)}: `{script} {' '.join(argv)}` does not parse: {reason}")


def paper_to_code_names():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Paper to code", 1)[1].split("\n## ", 1)[0]
    return sorted({name for name in re.findall(r"`([A-Za-z_][\w.]*)`", section) if "." in name})


MODULE_NAMES = sorted(path.stem for path in ROOT.glob("*.py"))


def module(name):
    return importlib.import_module(name)


@functools.cache
def project_classes():
    """Class name -> class, of every class a module of the project defines (no name is defined twice)."""
    return {name: obj for m in MODULE_NAMES for name, obj in vars(module(m)).items()
            if inspect.isclass(obj) and obj.__module__ == m}


def resolve(name):
    """A dotted name of the code: module.attr... or Class.attr... of a class the project defines.
    Attributes set in __init__ (self.merge = ...) and dataclass fields count."""
    parts = name.split(".")
    head = parts.pop(0)
    if head in MODULE_NAMES:
        obj = module(head)
    elif head in project_classes():
        obj = project_classes()[head]
    else:
        return False
    for part in parts:
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif inspect.isclass(obj) and (part in getattr(obj, "__dataclass_fields__", {})
                                       or re.search(rf"\bself\.{part}\s*=", inspect.getsource(obj))):
            return True
        else:
            return False
    return True


def test_paper_to_code_names_exist():
    names = paper_to_code_names()
    assert len(names) > 20, names
    missing = [name for name in names if not resolve(name)]
    assert not missing, f"README's paper-to-code table cites names the code lacks: {missing}"


def section(text, heading):
    """The text under a '## heading', up to the next '## ' heading."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


# The README's Results table names its variants shorter than tables.md.
README_COLUMNS = {"HF": "hf", "HF + CW": "hf+cw", "HF + DLKD": "hf+dlkd", "DIS2": "dis2",
                  "DIS2, per-scenario layout": "dis2-per-scenario", "DIS2, authors' recipe": "dis2-authors",
                  "ShaSpec": "shaspec", "ShaSpec, authors' strength": "shaspec-authors",
                  "HF, 2x budget": "hf-2x", "DIS2, 2x budget": "dis2-2x"}


def test_the_results_in_readme_and_reproduction_md_are_the_reproductions_tables():
    tables = (ROOT / "docs" / "reproduction" / "tables.md").read_text(encoding="utf-8")
    # Table 2 analogue: a bold scenario row, then one row per variant, "<variant name> (<n> seed[s])".
    mf1 = {}
    for line in section(tables, "Table 2 analogue: the ablation (F1 %) (exploratory)").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| **"):
            scenario = cells[0].strip("*")
        elif line.startswith("| ") and " (" in cells[0]:
            name = cells[0].rsplit(" (", 1)[0]
            mf1[scenario, name] = cells[report.SCORE_HEADER.index("mF1")]
    # The README's table: a row per scenario, a column per variant, each cell the mF1 of tables.md.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in section(readme, "Results").splitlines() if line.startswith("| ")]
    header, rows = lines[0], [line for line in lines if "±" in line]
    columns = [README_COLUMNS[c.strip()] for c in header.strip("|").split("|")[1:]]
    assert len(rows) == 3 and len(columns) >= 2
    for scenario, row in zip(dis2.SCENARIOS, rows):
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert cells == [mf1[evaluate.ROW_NAMES[scenario], report.VARIANT_NAMES[v]] for v in columns]

    # reproduction.md's reading of the 46 runs: its table of P1-P5 is tables.md's, row for row, and every
    # "mean ± seeds / ± seeds and tiles" it quotes (above the retired run) is one of tables.md's.
    reading = section((ROOT / "docs" / "reproduction.md").read_text(encoding="utf-8"), "Results")
    reading = reading.split("\n### The previous run")[0]
    primary = section(tables, "The primary questions (mF1, clutter counted; Holm at a family-wise 5%)")
    for question in ("P1", "P2", "P3", "P4", "P5"):
        row = [line for line in reading.splitlines() if line.startswith(f"| {question} |")]
        expected, power = [[line for line in primary.splitlines() if line.startswith(f"| {question} |") and mark in line]
                           for mark in ("(n=", "%")]
        assert len(row) == 1 and len(expected) == 1 and len(power) == 1, question
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        theirs = [c.strip() for c in expected[0].strip("|").split("|")]
        power = [c.strip() for c in power[0].strip("|").split("|")]
        # Δ, df, p, Holm's verdict, and the power at Δ
        assert cells[2:3] + cells[4:7] + cells[7:8] == theirs[3:6] + theirs[7:8] + power[1:2], (question, cells, theirs)
    differences = re.findall(r"[+-]\d+\.\d\d ± \d+\.\d\d / ± \d+\.\d\d", " ".join(reading.split()))
    assert len(differences) >= 20
    assert not [d for d in differences if f"{d} (n=" not in tables]
    # The README's differences: mean ± the interval over seeds and tiles, as tables.md has them.
    readme_differences = re.findall(r"([+-]\d+\.\d\d) ± (\d+\.\d\d)", section(readme, "Results"))
    assert len(readme_differences) >= 3
    assert all(re.search(rf"{re.escape(m)} ± \d+\.\d\d / ± {w} \(n=", tables) for m, w in readme_differences)


# ---------------------------------------------------------------- names, flags, defaults, snippets

CODE_SPAN = re.compile(r"(`+)((?:(?!\1).)+?)\1", re.S)
# A file name written in code (`train.py`, `docs/data.md`) is not an attribute of a module.
FILE_SUFFIXES = {"py", "md", "pt", "json", "csv", "png", "tif", "tiff", "jpg", "txt", "ini"}
# Pages about one command: a flag they name belongs to it, unless the passage names another.
PAGE_COMMANDS = {"docs/training.md": "train.py", "docs/evaluation.md": "evaluate.py", "docs/predict.md": "predict.py",
                 "docs/speed.md": "bench.py", "docs/reproduction.md": "reproduce.py"}
# Flags of programs that are not ours, which the pages cite.
FOREIGN_FLAGS = {"--norm_cfg": "the authors' training script (design.md)",
                 "--mode": "the authors' training script (design.md)"}
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(\S.*?)\s*-->\s*$")


def code_spans(text):
    return [match.group(2).strip() for match in CODE_SPAN.finditer(prose_keeping_code(text))]


def prose_keeping_code(text):
    """The text outside fenced blocks, inline code kept."""
    return FENCE.sub("", text)


def code_names(span):
    """The dotted names of the code in a code span: module.name... or Class.name..., of our modules and classes."""
    heads = "|".join(map(re.escape, [*MODULE_NAMES, *project_classes()]))
    for match in re.finditer(rf"(?<![\w./-])({heads})((?:\.[A-Za-z_]\w*)+)", span):
        if match.group(2)[1:].split(".")[0] not in FILE_SUFFIXES:
            yield match.group(1) + match.group(2)


def name_problems(text):
    """Each dotted name written in the text's code spans that the code lacks."""
    return [f"`{name}`: no such name in the code"
            for span in code_spans(text) for name in code_names(span) if not resolve(name)]


# The commands: every file at the root or in tools/ that runs as a script.
SCRIPT_FILES = {str(path.relative_to(ROOT)): path for path in [*sorted(ROOT.glob("*.py")), *sorted(ROOT.glob("tools/*.py"))]
                if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")}


class Captured(Exception):
    """Raised in place of parsing, with the parser a command built."""


@functools.cache
def parser_of(script):
    """The argparse parser of a command, or None for one that builds none (data.py only answers that
    its commands moved): its entry point, parse_args or else main, is called with parsing replaced by
    a raise."""
    name = Path(script).stem
    if script.startswith("tools/"):
        spec = importlib.util.spec_from_file_location(f"tools_{name}", SCRIPT_FILES[script])
        code = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(code)
    else:
        code = module(name)
    entry = getattr(code, "parse_args", None) or getattr(code, "main", None)
    if entry is None:
        return None

    def capture(self, args=None, namespace=None):
        raise Captured(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        entry(*([[]] if inspect.signature(entry).parameters else []))
    except Captured as captured:
        return captured.args[0]
    except data.DataError:
        return None
    finally:
        argparse.ArgumentParser.parse_args = original
    return None


def actions_of(script):
    """Flag -> its argparse action, of each flag a command parses."""
    return dict(parser_of(script)._option_string_actions)


def answers(script, flag):
    """Whether a command takes a flag, or answers it with the command it moved to."""
    moved = getattr(module(Path(script).stem), "MOVED", {}) if not script.startswith("tools/") else {}
    return flag in actions_of(script) or flag in moved


def literal(text, bare=False):
    """The value a default is stated as: a leading code span or number, standing alone (followed by
    nothing, punctuation or a parenthesis); with `bare`, also a text that is one word."""
    text = text.strip()
    match = re.match(r"(?:`([^`]+)`|(-?\d+(?:\.\d+)?(?:e-?\d+)?))(?=$|[,;)]|\.(?!\d)|\s\()", text)
    if match:
        return match.group(1) if match.group(1) is not None else match.group(2)
    return text if bare and text and not re.search(r"\s", text) else None


def stated_default(action):
    """(known, value): the default a flag has, or, where the parser leaves it None to fill it in later,
    the one its help states; known is False where the help states one in words only."""
    if action.default is not None and action.default is not argparse.SUPPRESS:
        return True, action.default
    return said_default(action.help)


def said_default(help_text):
    """(known, value): the default a --help text states, "(default X)" or "(default: X)"; None where
    it states none; known is False where it states one in words only."""
    said = re.search(r"\(default:? ([^);]*)", help_text or "")
    if said is None:
        return True, None
    value = literal(said.group(1), bare=True)
    return value is not None, value


def same_value(stated, value):
    try:
        return float(stated) == float(value)
    except (TypeError, ValueError):
        return str(stated) == str(value)


def passages(text):
    """The prose in pieces that speak of one thing each: paragraphs, list items, table rows."""
    return [piece for piece in re.split(r"\n\s*\n|\n(?=\s*(?:\||[-*] |\d+\. ))", prose_keeping_code(text)) if piece.strip()]


def scripts_named(text):
    return [s for s in SCRIPT_FILES if re.search(rf"(?<![\w./-]){re.escape(s)}(?![\w-])", text)]


def table_headers(text):
    """Each table row of the text -> the lower-cased header cells of its table."""
    headers = {}
    for table in re.findall(r"(?:^[ \t]*\|.*\n?)+", prose_keeping_code(text), re.M):
        rows = [row.strip() for row in table.strip().splitlines()]
        for row in rows[2:]:
            headers[row] = [cell.strip().lower() for cell in rows[0].strip("|").split("|")]
    return headers


def cells(row):
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def stated_defaults(passage, headers):
    """(flag, the text that states its default) for each default the passage states: in a table row
    under a `default` column, or as "`--flag` defaults to X", "`--flag`, default X", "`--flag` (default X",
    "`--flag`: default X" and, in a sentence with "defaults to", "`--flag` to X"."""
    header = headers.get(passage.strip())
    if header is not None:
        row = cells(passage)
        flag_column = next((i for i, h in enumerate(header) if h.startswith("flag")), None)
        if "default" not in header or flag_column is None or len(row) != len(header):
            return []
        flag = re.search(r"`(--[\w-]+)", row[flag_column])
        return [(flag.group(1), row[header.index("default")])] if flag else []
    text, flag = passage.replace("\n", " "), r"`(--[\w-]+)(?: [^`]*)?`"
    found = re.findall(flag + r"(?: defaults to|, default| \(default|: default) (.+)", text)
    for sentence in re.split(r"(?<=\.)\s", text):
        if "defaults to" in sentence:
            found += re.findall(flag + r" to (.+?)(?=, `--|$)", sentence)
    return found


def flag_problems(text, page_command=None):
    """Each `--flag` the text names that the commands it names it for lack (those its code span or
    passage names, and the page's command; every command where none is named), and each default it
    states that none of them has."""
    problems, headers = [], table_headers(text)
    ours = [s for s in SCRIPT_FILES if not s.startswith("tools/") and parser_of(s) is not None]
    for passage in passages(text):
        named = [c for c in dict.fromkeys([*scripts_named(passage), *filter(None, [page_command])])
                 if parser_of(c) is not None]
        commands = named or ours
        for span in code_spans(passage):
            owners = [s for s in scripts_named(span) if parser_of(s) is not None] or commands
            if owners is not commands:  # a command line: what precedes the script is the runner's (torchrun's)
                span = span[min(span.index(s) for s in owners):]
            for flag in re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", span):
                if flag not in FOREIGN_FLAGS and not any(answers(c, flag) for c in owners):
                    problems.append(f"`{flag}`: not a flag of {' or '.join(owners)}")
        for flag, said in stated_defaults(passage, headers):
            stated = literal(said)
            defaults = [stated_default(actions_of(c)[flag]) for c in commands if flag in actions_of(c)]
            known = [value for is_known, value in defaults if is_known]
            if stated is not None and known and not any(same_value(stated, value) for value in known):
                problems.append(f"`{flag}`: the default is {' or '.join(map(str, known))}, not {stated}")
    return problems


def python_snippets(text):
    """(line, code, reason it is not run or None) of each fenced Python block and each
    `python -c "..."` of a fenced shell block; a block is not run when the line above its
    fence is `<!-- not run: REASON -->`."""
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marked = NOT_RUN.match(above)
        reason = marked.group(1) if marked else None
        language, body = match.group(2).strip().lower(), match.group(3)
        if language in ("python", "py"):
            yield line, body, reason
        elif language in ("", "bash", "sh", "shell", "console") and re.search(r"\bpython3? -c\b", body):
            tokens = shlex.split(body.replace("\\\n", " "), comments=True)
            for i, token in enumerate(tokens[:-2]):
                if Path(token).name in ("python", "python3") and tokens[i + 1] == "-c":
                    yield line, tokens[i + 2], reason


def snippet_problems(code):
    """Each name of our modules a snippet imports or reads that the code lacks."""
    problems, modules = [], {}
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules.update({alias.asname or alias.name: alias.name for alias in node.names if alias.name in MODULE_NAMES})
        elif isinstance(node, ast.ImportFrom) and node.module in MODULE_NAMES:
            problems += [f"`from {node.module} import {alias.name}`: no such name in the code"
                         for alias in node.names if not resolve(f"{node.module}.{alias.name}")]
    for node in ast.walk(ast.parse(code)):
        chain = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if chain and isinstance(node, ast.Name) and node.id in modules:
            names = [".".join([modules[node.id], *chain[:n]]) for n in range(1, len(chain) + 1)]
            problems += [f"`{name}`: no such name in the code" for name in names if not resolve(name)][:1]
    return sorted(set(problems))


def doc_problems(text, page_command=None):
    """Everything the checks below find wrong in a page, but running its snippets."""
    return (name_problems(text) + flag_problems(text, page_command)
            + [problem for _, code, _ in python_snippets(text) for problem in snippet_problems(code)])


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_names_flags_and_defaults_are_the_codes(page):
    problems = doc_problems(page.read_text(encoding="utf-8"), PAGE_COMMANDS.get(page_id(page)))
    assert not problems, f"{page_id(page)}:\n" + "\n".join(problems)


MADE_UP_PAGE = """# A page that has gone stale

Normalisation is `data.normalise`; the loss, `losses.dis2_loss`, weighs `losses.no_such_loss`.
`DIS2Config.layout` exists, `DIS2Config.no_such_field` does not; `train.py` is a file.

Train with `python train.py --epochs 3 --no-such-flag`; evaluate.py takes `--missing` and
`--split`, but `python evaluate.py --epochs 3` fails. `torchrun --nproc_per_node=2 train.py --seed 1`
runs on two GPUs.

| flag | default | what |
|---|---|---|
| `--epochs` | 100 | epochs |
| `--batch-size` | 16 | patches per step |
| `--ablation hf\\|dis2` | `dis2` (the full model) | the variant |
| `--lr` | 1e-3 | peak learning rate |
| `--workers` | 4 with CUDA, 0 on CPU | loader processes |

`--p-missing-rgir`, default 0.5, is the probability that RGIR is missing.

```python
import evaluate
from dis2 import DIS2, NoSuchModel
evaluate.grid_image([], [], [], 10)
```

<!-- not run: needs the tiles in DIR -->
```bash
python -c "import data; print(len(data.load_split('DIR', 'val')))"
```
"""


def test_the_checker_finds_a_missing_name_a_missing_flag_and_a_wrong_default():
    assert doc_problems(MADE_UP_PAGE, "train.py") == [
        "`losses.no_such_loss`: no such name in the code",
        "`DIS2Config.no_such_field`: no such name in the code",
        "`--no-such-flag`: not a flag of train.py",
        "`--epochs`: not a flag of evaluate.py",
        "`--batch-size`: the default is 8, not 16",
        "`--p-missing-rgir`: the default is 0.6, not 0.5",
        "`evaluate.grid_image`: no such name in the code",
        "`from dis2 import NoSuchModel`: no such name in the code",
    ]
    assert [(line, reason) for line, _, reason in python_snippets(MADE_UP_PAGE)] == [(20, None), (27, "needs the tiles in DIR")]


SNIPPETS_TO_RUN = [(page, line, code) for page in PAGES
                   for line, code, reason in python_snippets(page.read_text(encoding="utf-8")) if reason is None]


@pytest.mark.slow
@pytest.mark.parametrize("page, line, code", SNIPPETS_TO_RUN, ids=[f"{page_id(p)}:{n}" for p, n, _ in SNIPPETS_TO_RUN])
def test_python_snippets_run(page, line, code, monkeypatch):
    """Run in the repository, as a reader runs them; those that need data the tests lack are marked not run."""
    monkeypatch.chdir(ROOT)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"{page_id(page)}:{line}", "exec"), {"__name__": "__doc_snippet__"})


# Each command's flags as it fills them in when they are left out (train.py's prepare fills the budget).
FILLED_DEFAULTS = {"train.py": lambda: train.fill_budget(train.parse_args([])),
                   "evaluate.py": lambda: evaluate.parse_args([]),
                   "predict.py": lambda: predict.parse_args(["--out", "OUT"]),
                   "bench.py": lambda: bench.parse_args([]),
                   "reproduce.py": lambda: reproduce.parse_args(["DIR"])}


def help_default_problems(parser, values, script):
    """Each flag whose --help text, as --help prints it (%(default)s filled in), states a default
    other than the value the command takes when the flag is left out."""
    wrong, formatter = [], parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or not action.help or action.help is argparse.SUPPRESS:
            continue
        known, stated = said_default(formatter._expand_help(action))
        value = values.get(action.dest)
        if known and stated is not None and value is not None and not same_value(stated, value):
            wrong.append(f"{action.option_strings[0]}: --help says {stated}, {script} takes {value}")
    return wrong


@pytest.mark.parametrize("script", FILLED_DEFAULTS)
def test_help_states_the_defaults_the_command_uses(script):
    """A default that --help states in its text is the value the command takes: read from the help
    text, whether the parser holds the default or the command fills it in later."""
    parser = parser_of(script)
    stated = [a for a in parser._actions if a.help and said_default(parser._get_formatter()._expand_help(a))[1] is not None]
    assert stated, f"{script}: no --help text states a default"
    assert not help_default_problems(parser, vars(FILLED_DEFAULTS[script]()), script)


def test_the_help_default_check_finds_a_wrong_default():
    parser = argparse.ArgumentParser()
    parser.add_argument("--overlap", type=int, default=128, help="pixels shared by windows (default 64)")
    parser.add_argument("--window", type=int, default=512, help="window side (default %(default)s)")
    parser.add_argument("--batch-size", type=int, help="windows per batch (default 8)")
    parser.add_argument("--amp", help="precision (default: bf16 on CUDA, else off)")
    values = dict(overlap=128, window=512, batch_size=16, amp="off")
    assert help_default_problems(parser, values, "made-up.py") == [
        "--overlap: --help says 64, made-up.py takes 128", "--batch-size: --help says 8, made-up.py takes 16"]


def test_bench_offers_no_flag_it_does_not_read():
    unread = {"--data", "--dataset", "--epochs", "--samples-per-epoch", "--p-missing-rgir", "--out", "--resume",
              "--workers"}
    assert not unread & set(parser_of("bench.py")._option_string_actions)
    assert {"--batch-size", "--patch", "--width", "--ablation", "--amp", "--inference", "--repeats"} <= \
        set(parser_of("bench.py")._option_string_actions)


def test_the_readme_stays_a_front_page():
    """Under 200 lines: the manual is docs/ (issue 38)."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 200


@pytest.mark.parametrize("script", [s for s in SCRIPT_FILES if parser_of(s) is not None])
def test_every_flag_has_help(script):
    """--help says what each flag and argument is for, none left with its name alone."""
    silent = [action.option_strings[0] if action.option_strings else action.dest
              for action in parser_of(script)._actions if not action.help]
    assert not silent, f"{script}: no help for {', '.join(silent)}"
