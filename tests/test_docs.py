"""The front page cannot rot: every relative link and image in README.md and
docs/*.md points to a file that exists (and, with a #fragment, to a heading
of that file), every `python train.py|evaluate.py|predict.py|... ...` command in a
fenced block of README.md or docs/*.md parses its flags, and every name the
README's paper-to-code table cites exists in the code. Nothing is run."""

import inspect
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
import reproduce
import runtime
import synth
import train

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~)(.*?)$\n(.*?)^\1[ \t]*$", re.M | re.S)
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


def resolve(name):
    """A dotted name of the code: module.attr..., or Class.attr of dis2.
    Attributes set in __init__ (self.merge = ...) and dataclass fields count."""
    modules = {m.__name__: m for m in (dis2, losses, data, synth, probe, runtime, train, evaluate, predict,
                                       reproduce, figures, bench)}
    parts = name.split(".")
    obj = modules[parts.pop(0)] if parts[0] in modules else dis2
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
                  "ShaSpec": "shaspec", "HF, 2x budget": "hf-2x", "DIS2, 2x budget": "dis2-2x"}


def test_the_results_in_readme_and_reproduction_md_are_the_reproductions_tables():
    tables = (ROOT / "docs" / "reproduction" / "tables.md").read_text(encoding="utf-8")
    # Table 2 analogue: a bold scenario row, then one row per variant, "<variant name> (<n> seed[s])".
    mf1 = {}
    for line in section(tables, "Table 2 analogue: the ablation (F1 %)").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| **"):
            scenario = cells[0].strip("*")
        elif line.startswith("| ") and " (" in cells[0]:
            name = cells[0].rsplit(" (", 1)[0]
            mf1[scenario, name] = cells[reproduce.SCORE_HEADER.index("mF1")]
    # The README's table: a row per scenario, a column per variant, each cell the mF1 of tables.md.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in section(readme, "Results").splitlines() if line.startswith("| ")]
    header, rows = lines[0], [line for line in lines if "±" in line]
    columns = [README_COLUMNS[c.strip()] for c in header.strip("|").split("|")[1:]]
    assert len(rows) == 3 and len(columns) >= 2
    for scenario, row in zip(dis2.SCENARIOS, rows):
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert cells == [mf1[evaluate.ROW_NAMES[scenario], reproduce.VARIANT_NAMES[v]] for v in columns]

    # reproduction.md's claim-1 table: DIS2 minus HF per scenario under both protocols, both intervals.
    claim_table = section((ROOT / "docs" / "reproduction.md").read_text(encoding="utf-8"), "Results")
    differences = re.findall(r"[+-]\d+\.\d\d ± \d+\.\d\d / ± \d+\.\d\d",
                             claim_table.split("**Claim 1")[1].split("**Claim 2")[0])
    assert len(differences) == 6 and all(f"{d} (n=" in tables for d in differences)
    # The README's differences: mean ± the interval over seeds and tiles, as tables.md has them.
    readme_differences = re.findall(r"([+-]\d+\.\d\d) ± (\d+\.\d\d)", section(readme, "Results"))
    assert len(readme_differences) >= 3
    assert all(re.search(rf"{re.escape(m)} ± \d+\.\d\d / ± {w} \(n=", tables) for m, w in readme_differences)
